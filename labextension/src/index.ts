import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';

import { JobsPanel } from './panel';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'clusterjupyter-labextension:sidebar',
  description: 'A left-sidebar panel listing cluster jobs, with their logs and a cancel button.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    restorer: ILayoutRestorer | null
  ): void => {
    const panel = new JobsPanel();
    shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, panel.id);
    }
    app.commands.addCommand('clusterjupyter:open-jobs', {
      label: 'Show Cluster Jobs',
      execute: () => shell.activateById(panel.id)
    });
  }
};

export default plugin;
