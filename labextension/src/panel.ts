/**
 * The "Cluster jobs" sidebar: the journal's jobs grouped by notebook, live; one job's error
 * and logs; cancel; "clear finished"; a click takes you to the cell that submitted the job.
 *
 * The list is polled every 2 s while the panel is visible (and not at all while it is hidden).
 * Elapsed times tick every second from the server's clock, so they keep step with the cell's
 * status line. A listing carries a preview of each cell; the full record (the cell, the error
 * with its traceback and log tail) is fetched for the selected job only.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  cancelJob,
  getJob,
  IJob,
  IJobError,
  isActive,
  JOB_STATES,
  JobState,
  jobLogs,
  listJobs,
  LOG_STREAMS,
  LogStream
} from './api';
import { element } from './dom';
import { clusterIcon } from './icon';

const POLL_INTERVAL = 2000;
const LOG_TAIL = 200;
const CLEARED_KEY = 'clusterjupyter:cleared';

/** What the details pane shows: why it failed, or one of the logs. */
export type View = 'error' | LogStream;
const VIEWS: ReadonlyArray<View> = ['error', ...LOG_STREAMS];

/** Filter choices: value → states asked of the server ('' = all). */
const FILTERS: ReadonlyArray<[string, string, JobState[]]> = [
  ['', 'All states', []],
  ['active', 'Pending or running', ['pending', 'running']],
  ...JOB_STATES.map((s): [string, string, JobState[]] => [s, stateLabel(s), [s]])
];

export function stateLabel(state: JobState): string {
  return state.replace(/_/g, ' ');
}

/** The same words for an empty log everywhere (the panel and the magics say them too). */
export function emptyLog(stream: string, final: boolean): string {
  return final ? `(${stream} is empty)` : `(${stream} is empty so far)`;
}

/** 42s, 3m05s, 2h07m — as the cell's status line writes them. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  }
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function clock(unix: number): string {
  const d = new Date(unix * 1000);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toDateString() === today.toDateString()
    ? time
    : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

function failed(job: IJob): boolean {
  return !isActive(job.state) && job.state !== 'completed';
}

/** The headline of a failure: what happened, in words. */
export function headline(job: IJob): string {
  return `job ${job.id.slice(0, 8)} ${stateLabel(job.state)}: ${
    job.explanation || job.reason || 'no reason was reported'
  }`;
}

/** Renders a failure record into `node` (headline, facts, traceback, log tail). */
export function renderError(node: HTMLElement, job: IJob, error: IJobError): void {
  node.textContent = '';
  node.append(element('div', 'cj-Error-head', 'cj-error-head', headline(job)));
  const facts: string[] = [];
  if (error.exit_code !== undefined && error.exit_code !== null) {
    facts.push(`exit code ${error.exit_code}`);
  }
  if (error.signal) {
    facts.push(`stopped by ${error.signal}`);
  }
  if (error.limit) {
    facts.push(`hit its ${error.limit}`);
  }
  if (facts.length) {
    node.append(element('div', 'cj-Error-facts', undefined, facts.join(' · ')));
  }
  for (const [title, text, testid] of [
    ['Remote traceback', error.traceback, 'cj-error-traceback'],
    ["Last lines of the job's logs", error.log_tail, 'cj-error-logs']
  ] as const) {
    if (text) {
      node.append(element('div', 'cj-Error-title', undefined, title));
      node.append(element('pre', 'cj-Error-text', testid, text.trimEnd()));
    }
  }
}

/** Where a job came from; opens notebooks and shows cells (given by the plugin). */
export interface INavigator {
  goToCell(path: string, cellId: string | undefined): Promise<boolean>;
  openQueue(): void;
}

/** One job in the list; updated in place on every poll so clicks are never lost. */
class JobRow {
  readonly node = element('li', 'cj-Job', 'cj-job');
  private _name = element('span', 'cj-Job-name', 'cj-job-name');
  private _badge = element('span', 'cj-Badge', 'cj-job-state');
  private _id = element('code', 'cj-Job-id', 'cj-job-id');
  private _host = element('span', 'cj-Job-host', 'cj-job-host');
  private _submitted = element('span', 'cj-Job-submitted', 'cj-job-submitted');
  private _elapsed = element('span', 'cj-Job-elapsed', 'cj-job-elapsed');
  private _reason = element('div', 'cj-Job-reason', 'cj-job-reason');
  private _cancel = element('button', 'jp-Button cj-Job-cancel', 'cj-job-cancel', 'Cancel');

  constructor(
    public job: IJob,
    private _panel: JobsPanel,
    onSelect: (row: JobRow) => void,
    onCancel: (row: JobRow) => void
  ) {
    const top = element('div', 'cj-Job-top');
    top.append(this._name, this._badge, this._cancel);
    const meta = element('div', 'cj-Job-meta');
    meta.append(this._id, this._host, this._submitted, this._elapsed);
    this.node.append(top, meta, this._reason);
    this.node.tabIndex = 0;
    this.node.setAttribute('role', 'option');
    this.node.addEventListener('click', () => onSelect(this));
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' && event.target === this.node) {
        onSelect(this);
      }
    });
    this._cancel.title = 'Cancel this job on the cluster';
    this._cancel.addEventListener('click', event => {
      event.stopPropagation();
      onCancel(this);
    });
    this.update(job);
  }

  update(job: IJob): void {
    this.job = job;
    const node = this.node;
    node.dataset.jobId = job.id;
    node.dataset.state = job.state;
    node.title =
      `${job.id}\n${job.notebook_path || job.notebook || ''}\n\n${job.preview}`.trim() +
      (job.notebook_path ? '\n\n(click: show its cell and its logs)' : '');
    this._name.textContent = job.name;
    this._badge.textContent = stateLabel(job.state);
    this._badge.className = `cj-Badge cj-Badge-${job.state}`;
    this._id.textContent = job.id.slice(0, 8);
    this._id.title = `${job.profile}${job.native_id ? ` #${job.native_id}` : ''}`;
    this._host.textContent = job.host ? `on ${job.host}` : job.profile;
    this._host.title = job.host ? `ran on ${job.host} (${job.profile})` : `profile ${job.profile}`;
    this._submitted.textContent = clock(job.submitted);
    this._submitted.title = `submitted ${new Date(job.submitted * 1000).toLocaleString()}`;
    this.tick();
    const why = failed(job) ? job.explanation || job.reason : job.reason;
    this._reason.textContent = why;
    this._reason.title = why;
    this._reason.hidden = !why;
    this._cancel.hidden = !isActive(job.state);
  }

  /** Elapsed time, computed here every second (in step with the cell's status line). */
  tick(): void {
    const job = this.job;
    if (job.started !== null) {
      const end = job.finished ?? this._panel.serverNow();
      const verb = isActive(job.state) ? 'running' : 'ran';
      this._elapsed.textContent = `${verb} ${formatDuration(end - job.started)}`;
    } else if (job.state === 'pending') {
      this._elapsed.textContent = `queued ${formatDuration(this._panel.serverNow() - job.submitted)}`;
    } else {
      this._elapsed.textContent = 'did not start';
    }
  }

  set cancelling(value: boolean) {
    this._cancel.disabled = value;
    this._cancel.textContent = value ? 'Cancelling…' : 'Cancel';
  }

  set selected(value: boolean) {
    this.node.classList.toggle('cj-mod-selected', value);
    this.node.setAttribute('aria-selected', String(value));
  }
}

/** A sweep: one row (name, state, counts by state) whose element rows unfold below it. */
class SweepRow {
  readonly node = element('li', 'cj-Sweep', 'cj-sweep');
  readonly elements = element('ul', 'cj-Sweep-elements', 'cj-sweep-elements');
  private _toggle = element('button', 'cj-Sweep-toggle', 'cj-sweep-toggle');
  private _name = element('span', 'cj-Job-name', 'cj-sweep-name');
  private _badge = element('span', 'cj-Badge', 'cj-sweep-state');
  private _counts = element('div', 'cj-Job-meta', 'cj-sweep-counts');

  constructor(
    readonly id: string,
    private _expanded: Set<string>
  ) {
    const top = element('div', 'cj-Job-top');
    top.append(this._toggle, this._name, this._badge);
    this.node.append(top, this._counts, this.elements);
    this.node.dataset.sweepId = id;
    this._toggle.addEventListener('click', () => this.expanded = !this.expanded);
    top.addEventListener('click', event => {
      if (event.target !== this._toggle) {
        this.expanded = !this.expanded;
      }
    });
    this.expanded = this.expanded; // draw the toggle
  }

  get expanded(): boolean {
    return this._expanded.has(this.id);
  }

  set expanded(value: boolean) {
    if (value) {
      this._expanded.add(this.id);
    } else {
      this._expanded.delete(this.id);
    }
    this.elements.hidden = !value;
    this._toggle.textContent = value ? '▾' : '▸';
    this._toggle.title = value ? 'Hide the elements' : "Show each element's state";
    this._toggle.setAttribute('aria-expanded', String(value));
  }

  update(jobs: IJob[]): void {
    const ref = jobs[0].sweep!;
    const state = ref.state;
    this.node.dataset.state = state;
    this._name.textContent = ref.name;
    this._name.title = `sweep ${ref.id} of ${ref.size} elements (%cluster sweep ${ref.id.slice(0, 8)})`;
    this._badge.textContent = `sweep ${stateLabel(state)}`;
    this._badge.className = `cj-Badge cj-Badge-${state}`;
    const parts = (['done', 'running', 'pending', 'failed'] as const)
      .filter(k => ref.counts[k])
      .map(k => `${ref.counts[k]} ${k}`);
    const listed = jobs.length < ref.size ? ` (${jobs.length} listed)` : '';
    this._counts.textContent = `${ref.id.slice(0, 8)} · ${ref.size} elements${listed}: ${parts.join(' · ')}`;
  }
}

/** The sidebar panel. */
export class JobsPanel extends Widget {
  private _filter = element('select', 'cj-Filter', 'cj-state-filter');
  private _clear = element('button', 'cj-HeaderButton', 'cj-clear-finished', 'Clear finished');
  private _queue = element('button', 'cj-HeaderButton', 'cj-open-queue', 'Queue');
  private _error = element('div', 'cj-Error', 'cj-error');
  private _list = element('div', 'cj-JobList', 'cj-job-list');
  private _empty = element('div', 'cj-Empty', 'cj-empty');
  private _logs = element('section', 'cj-Logs', 'cj-logs');
  private _logTitle = element('span', 'cj-Logs-title', 'cj-log-title');
  private _logText = element('pre', 'cj-Logs-text', 'cj-log-text');
  private _errorView = element('div', 'cj-ErrorView', 'cj-error-view');
  private _tabs = new Map<View, HTMLButtonElement>();
  private _rows = new Map<string, JobRow>();
  private _groups = new Map<string, HTMLElement>();
  private _sweeps = new Map<string, SweepRow>();
  private _expanded = new Set<string>();
  private _poll: Poll;
  private _ticker: number;
  private _selected: IJob | null = null;
  private _view: View = 'stdout';
  private _logsComplete = false; // the selected job's view was read after it finished
  private _logRequest = 0;
  private _offset = 0; // server clock - browser clock, seconds
  private _cleared: Set<string>;

  constructor(private _nav: INavigator | null = null) {
    super();
    this.id = 'clusterjupyter-jobs';
    this.addClass('cj-JobsPanel');
    this.node.dataset.testid = 'cj-panel';
    this.title.icon = clusterIcon;
    this.title.caption = 'Cluster jobs (clusterjupyter)';
    this._cleared = new Set(JSON.parse(localStorage.getItem(CLEARED_KEY) || '[]'));

    const header = element('header', 'cj-Header');
    header.append(element('h2', 'cj-Header-title', undefined, 'Cluster jobs'));
    for (const [value, label] of FILTERS) {
      const option = element('option', '', undefined, label);
      option.value = value;
      this._filter.append(option);
    }
    this._filter.title = 'Show jobs in this state';
    this._filter.addEventListener('change', () => void this.refresh());
    this._clear.title = 'Hide the jobs that have ended (the journal keeps them)';
    this._clear.addEventListener('click', () => this._clearFinished());
    this._queue.title = "Open the scheduler's queue in the main area";
    this._queue.addEventListener('click', () => this._nav?.openQueue());
    this._queue.hidden = this._nav === null;
    const tools = element('div', 'cj-Header-tools');
    tools.append(this._filter, this._clear, this._queue);
    header.append(tools);

    this._error.hidden = true;
    this._empty.hidden = true;
    this._list.setAttribute('role', 'listbox');

    const logHeader = element('div', 'cj-Logs-header');
    const tabs = element('div', 'cj-Logs-tabs');
    tabs.setAttribute('role', 'tablist');
    for (const view of VIEWS) {
      const tab = element('button', 'cj-Logs-tab', `cj-log-tab-${view}`, view);
      tab.setAttribute('role', 'tab');
      tab.addEventListener('click', () => this._setView(view));
      this._tabs.set(view, tab);
      tabs.append(tab);
    }
    const close = element('button', 'cj-Logs-close', 'cj-log-close', '×');
    close.title = 'Close';
    close.addEventListener('click', () => this._select(null));
    logHeader.append(element('span', 'cj-Logs-label', undefined, 'Job'), this._logTitle, close);
    this._logs.append(logHeader, tabs, this._errorView, this._logText);
    this._logs.hidden = true;
    this._setView('stdout');

    const body = element('div', 'cj-Body');
    body.append(this._error, this._list, this._empty);
    this.node.append(header, body, this._logs);

    this._poll = new Poll({
      factory: () => this._tick(),
      frequency: { interval: POLL_INTERVAL, backoff: true, max: 30 * 1000 },
      name: 'clusterjupyter:jobs',
      // no requests while the panel (or the browser tab) is hidden
      standby: () => !this.isVisible || 'when-hidden'
    });
    this._ticker = window.setInterval(() => {
      if (this.isVisible) {
        for (const row of this._rows.values()) {
          row.tick();
        }
      }
    }, 1000);
  }

  /** The server's clock now (Unix seconds). */
  serverNow(): number {
    return Date.now() / 1000 + this._offset;
  }

  /** Poll now (the next tick is scheduled from here). */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  dispose(): void {
    this._poll.dispose();
    window.clearInterval(this._ticker);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  private get _states(): JobState[] {
    const found = FILTERS.find(([value]) => value === this._filter.value);
    return found ? found[2] : [];
  }

  private async _tick(): Promise<void> {
    let jobs: IJob[];
    try {
      const list = await listJobs(this._states);
      this._offset = list.now - Date.now() / 1000;
      jobs = list.jobs;
    } catch (error) {
      this._showError(`Could not load the jobs: ${(error as Error).message}`);
      throw error; // the poll backs off
    }
    this._showError('');
    this._render(jobs.filter(job => !this._cleared.has(job.id)));
    await this._loadView();
  }

  private _clearFinished(): void {
    for (const row of this._rows.values()) {
      if (!isActive(row.job.state)) {
        this._cleared.add(row.job.id);
      }
    }
    // keep the set small: ids of jobs no longer listed are dropped
    const listed = new Set(this._rows.keys());
    this._cleared = new Set([...this._cleared].filter(id => listed.has(id)));
    localStorage.setItem(CLEARED_KEY, JSON.stringify([...this._cleared]));
    if (this._selected && this._cleared.has(this._selected.id)) {
      this._select(null);
    }
    this._render([...this._rows.values()].map(r => r.job).filter(j => !this._cleared.has(j.id)));
  }

  private _group(path: string): HTMLElement {
    let group = this._groups.get(path);
    if (!group) {
      group = element('section', 'cj-Group', 'cj-group');
      group.dataset.notebook = path;
      const title = element('h3', 'cj-Group-title', 'cj-group-title');
      const name = path ? path.split('/').pop() || path : 'Other jobs';
      title.textContent = name;
      title.title = path || 'jobs not submitted from a notebook under this server';
      group.append(title, element('ul', 'cj-Group-jobs'));
      this._groups.set(path, group);
    }
    return group;
  }

  private _render(jobs: IJob[]): void {
    const keep = new Set(jobs.map(job => job.id));
    for (const [id, row] of this._rows) {
      if (!keep.has(id)) {
        row.node.remove();
        this._rows.delete(id);
      }
    }
    // groups in the order of their newest job; jobs newest first within a group
    const order: string[] = [];
    const byGroup = new Map<string, IJob[]>();
    for (const job of jobs) {
      const path = job.notebook_path || '';
      if (!byGroup.has(path)) {
        byGroup.set(path, []);
        order.push(path);
      }
      byGroup.get(path)!.push(job);
    }
    for (const [path, group] of this._groups) {
      if (!byGroup.has(path)) {
        group.remove();
        this._groups.delete(path);
      }
    }
    order.forEach((path, gi) => {
      const group = this._group(path);
      if (this._list.children[gi] !== group) {
        this._list.insertBefore(group, this._list.children[gi] ?? null);
      }
      const ul = group.querySelector('ul')!;
      // a sweep's elements are one row, where its newest element would be
      const items: Array<IJob | SweepRow> = [];
      const elements = new Map<string, IJob[]>();
      for (const job of byGroup.get(path)!) {
        const sweep = job.sweep;
        if (!sweep) {
          items.push(job);
          continue;
        }
        if (!sweep.latest) {
          continue; // an attempt a retry replaced
        }
        if (!elements.has(sweep.id)) {
          elements.set(sweep.id, []);
          let srow = this._sweeps.get(sweep.id);
          if (!srow) {
            srow = new SweepRow(sweep.id, this._expanded);
            this._sweeps.set(sweep.id, srow);
          }
          items.push(srow);
        }
        elements.get(sweep.id)!.push(job);
      }
      const place = (list: HTMLElement, node: HTMLElement, index: number): void => {
        if (list.children[index] !== node) {
          list.insertBefore(node, list.children[index] ?? null);
        }
      };
      const jobRow = (job: IJob): JobRow => {
        let row = this._rows.get(job.id);
        if (row) {
          row.update(job);
        } else {
          row = new JobRow(
            job,
            this,
            r => this._open(r.job),
            r => void this._cancel(r)
          );
          this._rows.set(job.id, row);
        }
        row.selected = job.id === this._selected?.id;
        return row;
      };
      items.forEach((item, index) => {
        if (item instanceof SweepRow) {
          place(ul, item.node, index);
          const members = elements.get(item.id)!.sort((a, b) => a.sweep!.index - b.sweep!.index);
          item.update(members);
          members.forEach((job, i) => {
            place(item.elements, jobRow(job).node, i);
            this._follow(job);
          });
          return;
        }
        const job = item;
        place(ul, jobRow(job).node, index);
        this._follow(job);
      });
      // rows of sweeps no longer listed here
      for (let i = ul.children.length - 1; i >= items.length; i--) {
        ul.children[i].remove();
      }
    });
    for (const [id, srow] of this._sweeps) {
      if (!srow.node.isConnected) {
        this._sweeps.delete(id);
      }
    }
    this._empty.hidden = jobs.length > 0;
    const states = this._states;
    this._empty.textContent = states.length
      ? `No ${states.map(stateLabel).join(' or ')} jobs.`
      : 'No cluster jobs yet. Run a cell with %%cluster to submit one.';
  }

  /** The selected job's details follow its record (to its error view when it fails). */
  private _follow(job: IJob): void {
    if (job.id === this._selected?.id) {
      const ended = isActive(this._selected.state) && !isActive(job.state);
      this._selected = job;
      if (ended) {
        this._logsComplete = false;
        if (failed(job)) {
          this._setView('error');
        }
      }
    }
  }

  /** A click on a job: its details here, and its cell in the notebook. */
  private _open(job: IJob): void {
    this._select(job);
    if (this._nav && job.notebook_path) {
      // (a notebook closed meanwhile rejects with "Disposed": nothing to show then)
      this._nav.goToCell(job.notebook_path, job.cell_id).catch(() => undefined);
    }
  }

  private _select(job: IJob | null): void {
    this._selected = job;
    this._logsComplete = false;
    this._logRequest++;
    for (const row of this._rows.values()) {
      row.selected = row.job.id === job?.id;
    }
    this._logs.hidden = job === null;
    this._logText.textContent = '';
    this._errorView.textContent = '';
    if (job) {
      this._logTitle.textContent = `${job.name} ${job.id.slice(0, 8)}`;
      this._logTitle.title = job.id;
      // why it failed comes first for a failed job
      const view = failed(job) ? 'error' : this._view === 'error' ? 'stdout' : this._view;
      this._setView(view);
    }
  }

  private _setView(view: View): void {
    this._view = view;
    for (const [name, tab] of this._tabs) {
      tab.classList.toggle('cj-mod-active', name === view);
      tab.setAttribute('aria-selected', String(name === view));
    }
    this._errorView.hidden = view !== 'error';
    this._logText.hidden = view === 'error';
    this._logsComplete = false;
    this._logRequest++;
    this._logText.textContent = '';
    void this._loadView();
  }

  /** Fetch the selected job's view unless it was already read in full after the job ended. */
  private async _loadView(): Promise<void> {
    const job = this._selected;
    if (!job || this._logsComplete) {
      return;
    }
    const ticket = ++this._logRequest;
    const view = this._view;
    if (view === 'error') {
      let full: IJob | null = null;
      let problem = '';
      try {
        full = await getJob(job.id);
      } catch (error) {
        problem = `Could not read the job: ${(error as Error).message}`;
      }
      if (ticket !== this._logRequest) {
        return;
      }
      if (!full) {
        this._errorView.textContent = problem;
      } else if (isActive(full.state)) {
        this._errorView.textContent = `${full.name} is still ${stateLabel(full.state)}.`;
      } else if (!failed(full)) {
        this._errorView.textContent = `${full.name} completed: nothing went wrong.`;
      } else {
        renderError(this._errorView, full, full.error || {});
      }
      this._logsComplete = full !== null && !isActive(full.state);
      return;
    }
    let text: string;
    let complete = false;
    try {
      const logs = await jobLogs(job.id, view, LOG_TAIL);
      complete = !isActive(logs.state);
      text = logs.text || emptyLog(view, complete);
    } catch (error) {
      text = `Could not read the ${view} log: ${(error as Error).message}`;
    }
    if (ticket !== this._logRequest) {
      return; // another job or stream was chosen meanwhile
    }
    const pre = this._logText;
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 4;
    pre.textContent = text;
    if (atBottom) {
      pre.scrollTop = pre.scrollHeight;
    }
    this._logsComplete = complete;
  }

  private async _cancel(row: JobRow): Promise<void> {
    const job = row.job;
    const result = await showDialog({
      title: 'Cancel cluster job?',
      body: `${job.name} is ${stateLabel(job.state)} on ${job.profile}. Cancelling stops it; its outputs will not come back.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep running' }),
        Dialog.warnButton({ label: 'Cancel job' })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    row.cancelling = true;
    try {
      row.update(await cancelJob(job.id));
      if (this._selected?.id === job.id) {
        this._logsComplete = false;
      }
    } catch (error) {
      void showErrorMessage('Could not cancel the job', (error as Error).message);
    } finally {
      row.cancelling = false;
    }
    void this.refresh();
  }

  private _showError(message: string): void {
    this._error.textContent = message;
    this._error.hidden = !message;
  }
}
