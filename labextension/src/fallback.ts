/**
 * Widget outputs of clusterjupyter that outlived their widget become static HTML.
 *
 * A job's live status line and the job panel are ipywidgets; each display also carries a
 * `text/html` alternative and the output metadata `clusterjupyter.fallback` (see
 * `clusterjupyter/widgets/_fallback.py`). JupyterLab's widget renderer never uses another type
 * of the bundle: after a kernel restart the views stay, greyed with broken-link icons, and a
 * reopened notebook says "Error displaying widget: model not found". This plugin replaces such
 * an output by its alternative (the widget's data is dropped from the output, so a saved
 * notebook keeps the static HTML):
 *
 * - for every output of ours in a notebook whose kernel restarts, stops, dies or is changed;
 * - for one output of ours whose widget renderer reports that its model cannot be found
 *   (a notebook reopened after its kernel went away).
 *
 * Widgets of other packages are left alone.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';

export const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
/** What JupyterLab's widget renderer writes when the widget's model is gone. */
const MISSING = 'Error displaying widget';
/** Kernel states after which no widget of the old kernel can come back. */
const GONE = new Set(['restarting', 'autorestarting', 'dead', 'terminating']);

interface IOutputJSON {
  output_type: string;
  data?: Record<string, unknown>;
  metadata?: Record<string, unknown>;
  [key: string]: unknown;
}

/** The output without its widget if it is one of ours with a static alternative, else null. */
export function staticAlternative(output: IOutputJSON): IOutputJSON | null {
  const data = output.data;
  const mark = (output.metadata?.clusterjupyter ?? {}) as { fallback?: string };
  if (!data || !(WIDGET_MIME in data) || !mark.fallback || !(mark.fallback in data)) {
    return null;
  }
  const rest = { ...data };
  delete rest[WIDGET_MIME];
  const metadata = { ...output.metadata };
  delete metadata.clusterjupyter;
  return { ...output, data: rest, metadata };
}

/** The parts of a code cell this plugin uses (no dependency on @jupyterlab/cells). */
interface ICodeCellLike {
  model: {
    type: string;
    outputs?: {
      length: number;
      get(index: number): { toJSON(): unknown };
      set(index: number, value: unknown): void;
    };
  };
  outputArea?: { widgets: ReadonlyArray<{ node: HTMLElement }> };
}

/** Replace the outputs of ours in `panel` (all of them, or those whose widget is missing). */
export function degrade(panel: NotebookPanel, onlyMissing: boolean): number {
  let changed = 0;
  for (const widget of panel.content.widgets) {
    const cell = widget as unknown as ICodeCellLike;
    const outputs = cell.model.type === 'code' ? cell.model.outputs : undefined;
    if (!outputs) {
      continue;
    }
    for (let i = 0; i < outputs.length; i++) {
      const alternative = staticAlternative(outputs.get(i).toJSON() as IOutputJSON);
      if (!alternative) {
        continue;
      }
      if (onlyMissing) {
        const node = cell.outputArea?.widgets[i]?.node;
        if (!node || !(node.textContent ?? '').includes(MISSING)) {
          continue;
        }
      }
      outputs.set(i, alternative);
      changed++;
    }
  }
  return changed;
}

function follow(panel: NotebookPanel): void {
  const session = panel.sessionContext;
  const all = (): void => void degrade(panel, false);
  session.statusChanged.connect((_, status) => {
    if (GONE.has(status)) {
      all();
    }
  });
  // another kernel, or none: the old kernel's widgets are gone
  session.kernelChanged.connect((_, change) => {
    if (change.oldValue) {
      all();
    }
  });
  // a reopened notebook: its renderers say when a widget cannot be found
  let pending = 0;
  const observer = new MutationObserver(() => {
    if (!pending) {
      pending = window.setTimeout(() => {
        pending = 0;
        if (!panel.isDisposed) {
          degrade(panel, true);
        }
      }, 100);
    }
  });
  observer.observe(panel.content.node, { childList: true, subtree: true, characterData: true });
  panel.disposed.connect(() => {
    observer.disconnect();
    window.clearTimeout(pending);
  });
}

export const fallbackPlugin: JupyterFrontEndPlugin<void> = {
  id: 'clusterjupyter-labextension:widget-fallback',
  description:
    'Shows the static HTML of a clusterjupyter status line or panel whose widget is gone (kernel restarted, notebook reopened).',
  autoStart: true,
  requires: [INotebookTracker],
  activate: (_app: JupyterFrontEnd, tracker: INotebookTracker): void => {
    tracker.forEach(follow);
    tracker.widgetAdded.connect((_, panel) => follow(panel));
  }
};
