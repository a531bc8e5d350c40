import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { renameNotebook } from './api';
import { fallbackPlugin } from './fallback';
import { clusterIcon } from './icon';
import { INavigator, JobsPanel } from './panel';
import { QueueView } from './queue';

/** What this plugin needs of an open notebook (its cells by id), without depending on it. */
interface INotebookLike extends Widget {
  context?: { ready: Promise<void> };
  revealed?: Promise<void>;
  content?: {
    widgets: ReadonlyArray<{ model: { id: string } }>;
    activeCellIndex: number;
    scrollToCell?: (cell: unknown) => Promise<void> | void;
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'clusterjupyter-labextension:sidebar',
  description:
    'A left-sidebar panel listing cluster jobs by notebook, with their errors, logs and cancel; a queue view.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    restorer: ILayoutRestorer | null
  ): void => {
    let queue: MainAreaWidget<QueueView> | null = null;
    const openQueue = (): void => {
      if (!queue || queue.isDisposed) {
        queue = new MainAreaWidget({ content: new QueueView() });
        queue.id = 'clusterjupyter-queue-view';
        queue.title.label = 'Cluster queue';
        queue.title.icon = clusterIcon;
        queue.title.closable = true;
      }
      if (!queue.isAttached) {
        shell.add(queue, 'main');
      }
      shell.activateById(queue.id);
    };

    const nav: INavigator = {
      goToCell: async (path, cellId) => {
        const widget = (await app.commands.execute('docmanager:open', {
          path
        })) as INotebookLike | undefined;
        if (!widget) {
          return false;
        }
        try {
          await widget.context?.ready;
          await widget.revealed;
        } catch {
          return false; // closed before it was ready
        }
        const notebook = widget.content;
        if (!notebook || !cellId) {
          return true;
        }
        const index = notebook.widgets.findIndex(c => c.model.id === cellId);
        if (index < 0) {
          return false;
        }
        notebook.activeCellIndex = index;
        await notebook.scrollToCell?.(notebook.widgets[index]);
        return true;
      },
      openQueue
    };

    const panel = new JobsPanel(nav);
    // jobs follow a renamed notebook (or folder)
    app.serviceManager.contents.fileChanged.connect((_, change) => {
      const before = change.oldValue?.path;
      const after = change.newValue?.path;
      if (change.type === 'rename' && before && after) {
        void renameNotebook(before, after)
          .then(moved => (moved ? panel.refresh() : undefined))
          .catch(error => console.warn('clusterjupyter: rename not recorded', error));
      }
    });
    shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, panel.id);
    }
    app.commands.addCommand('clusterjupyter:open-jobs', {
      label: 'Show Cluster Jobs',
      execute: () => shell.activateById(panel.id)
    });
    app.commands.addCommand('clusterjupyter:open-queue', {
      label: 'Show Cluster Queue',
      icon: clusterIcon,
      execute: openQueue
    });
  }
};

export default [plugin, fallbackPlugin];
