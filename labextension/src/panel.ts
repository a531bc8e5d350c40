/**
 * The "Cluster jobs" sidebar: a live list of the journal's jobs, one job's logs, and cancel.
 *
 * The list is polled every 2 s while the panel is visible (and not at all while it is hidden);
 * the logs of the selected job are refreshed with it while the job is pending or running.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  cancelJob,
  IJob,
  isActive,
  JOB_STATES,
  JobState,
  jobLogs,
  listJobs,
  LOG_STREAMS,
  LogStream
} from './api';
import { clusterIcon } from './icon';

const POLL_INTERVAL = 2000;
const LOG_TAIL = 200;

/** Filter choices: value → states asked of the server ('' = all). */
const FILTERS: ReadonlyArray<[string, string, JobState[]]> = [
  ['', 'All states', []],
  ['active', 'Pending or running', ['pending', 'running']],
  ...JOB_STATES.map((s): [string, string, JobState[]] => [s, stateLabel(s), [s]])
];

export function stateLabel(state: JobState): string {
  return state.replace(/_/g, ' ');
}

/** 42s, 3m 05s, 2h 03m, 1d 4h. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  }
  const h = Math.floor(m / 60);
  if (h < 24) {
    return `${h}h ${String(m % 60).padStart(2, '0')}m`;
  }
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  testid?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (testid) {
    node.dataset.testid = testid;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** One job in the list; updated in place on every poll so clicks are never lost. */
class JobRow {
  readonly node = element('li', 'cj-Job', 'cj-job');
  private _name = element('span', 'cj-Job-name', 'cj-job-name');
  private _badge = element('span', 'cj-Badge', 'cj-job-state');
  private _profile = element('span', 'cj-Job-profile', 'cj-job-profile');
  private _elapsed = element('span', 'cj-Job-elapsed', 'cj-job-elapsed');
  private _reason = element('div', 'cj-Job-reason', 'cj-job-reason');
  private _cancel = element('button', 'jp-Button cj-Job-cancel', 'cj-job-cancel', 'Cancel');

  constructor(
    public job: IJob,
    onSelect: (row: JobRow) => void,
    onCancel: (row: JobRow) => void
  ) {
    const top = element('div', 'cj-Job-top');
    top.append(this._name, this._badge);
    const meta = element('div', 'cj-Job-meta');
    meta.append(this._profile, this._elapsed, this._cancel);
    this.node.append(top, meta, this._reason);
    this.node.tabIndex = 0;
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
    node.title = `${job.id}\n${job.cell.split('\n').slice(0, 8).join('\n')}`;
    this._name.textContent = job.name;
    this._badge.textContent = stateLabel(job.state);
    this._badge.className = `cj-Badge cj-Badge-${job.state}`;
    this._profile.textContent = job.profile;
    if (job.elapsed !== null) {
      const verb = isActive(job.state) ? 'running' : 'ran';
      this._elapsed.textContent = `${verb} ${formatDuration(job.elapsed)}`;
    } else {
      this._elapsed.textContent = job.state === 'pending' ? 'queued' : 'did not start';
    }
    const why: string[] = [];
    if (job.reason) {
      why.push(job.reason);
    }
    // a cancelled job's exit code only repeats the signal that stopped it
    if (job.exit_code !== null && job.exit_code !== 0 && job.state !== 'cancelled') {
      why.push(`exit code ${job.exit_code}`);
    }
    this._reason.textContent = why.join(' · ');
    this._reason.hidden = why.length === 0;
    this._cancel.hidden = !isActive(job.state);
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

/** The sidebar panel. */
export class JobsPanel extends Widget {
  private _filter = element('select', 'cj-Filter', 'cj-state-filter');
  private _error = element('div', 'cj-Error', 'cj-error');
  private _list = element('ul', 'cj-JobList', 'cj-job-list');
  private _empty = element('div', 'cj-Empty', 'cj-empty');
  private _logs = element('section', 'cj-Logs', 'cj-logs');
  private _logTitle = element('span', 'cj-Logs-title', 'cj-log-title');
  private _logText = element('pre', 'cj-Logs-text', 'cj-log-text');
  private _tabs = new Map<LogStream, HTMLButtonElement>();
  private _rows = new Map<string, JobRow>();
  private _poll: Poll;
  private _selected: IJob | null = null;
  private _stream: LogStream = 'stdout';
  private _logsComplete = false; // the selected job's log was read after it finished
  private _logRequest = 0;

  constructor() {
    super();
    this.id = 'clusterjupyter-jobs';
    this.addClass('cj-JobsPanel');
    this.node.dataset.testid = 'cj-panel';
    this.title.icon = clusterIcon;
    this.title.caption = 'Cluster jobs';

    const header = element('header', 'cj-Header');
    header.append(element('h2', 'cj-Header-title', undefined, 'Cluster jobs'));
    for (const [value, label] of FILTERS) {
      const option = element('option', '', undefined, label);
      option.value = value;
      this._filter.append(option);
    }
    this._filter.title = 'Show jobs in this state';
    this._filter.addEventListener('change', () => void this.refresh());
    header.append(this._filter);

    this._error.hidden = true;
    this._empty.hidden = true;
    this._list.setAttribute('role', 'listbox');

    const logHeader = element('div', 'cj-Logs-header');
    const tabs = element('div', 'cj-Logs-tabs');
    tabs.setAttribute('role', 'tablist');
    for (const stream of LOG_STREAMS) {
      const tab = element('button', 'cj-Logs-tab', `cj-log-tab-${stream}`, stream);
      tab.setAttribute('role', 'tab');
      tab.addEventListener('click', () => this._setStream(stream));
      this._tabs.set(stream, tab);
      tabs.append(tab);
    }
    const close = element('button', 'cj-Logs-close', 'cj-log-close', '×');
    close.title = 'Close the logs';
    close.addEventListener('click', () => this._select(null));
    logHeader.append(element('span', 'cj-Logs-label', undefined, 'Logs'), this._logTitle, close);
    this._logs.append(logHeader, tabs, this._logText);
    this._logs.hidden = true;
    this._setStream('stdout');

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
  }

  /** Poll now (the next tick is scheduled from here). */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  dispose(): void {
    this._poll.dispose();
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
      jobs = await listJobs(this._states);
    } catch (error) {
      this._showError(`Could not load the jobs: ${(error as Error).message}`);
      throw error; // the poll backs off
    }
    this._showError('');
    this._render(jobs);
    await this._loadLogs();
  }

  private _render(jobs: IJob[]): void {
    const keep = new Set(jobs.map(job => job.id));
    for (const [id, row] of this._rows) {
      if (!keep.has(id)) {
        row.node.remove();
        this._rows.delete(id);
      }
    }
    jobs.forEach((job, index) => {
      let row = this._rows.get(job.id);
      if (row) {
        row.update(job);
      } else {
        row = new JobRow(
          job,
          r => this._select(r.job),
          r => void this._cancel(r)
        );
        this._rows.set(job.id, row);
      }
      row.selected = job.id === this._selected?.id;
      const here = this._list.children[index];
      if (here !== row.node) {
        this._list.insertBefore(row.node, here ?? null);
      }
      if (job.id === this._selected?.id) {
        this._selected = job;
      }
    });
    this._empty.hidden = jobs.length > 0;
    const states = this._states;
    this._empty.textContent = states.length
      ? `No ${states.map(stateLabel).join(' or ')} jobs.`
      : 'No cluster jobs yet. Run a cell with %%cluster to submit one.';
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
    if (job) {
      this._logTitle.textContent = job.name;
      this._logTitle.title = job.id;
      void this._loadLogs();
    }
  }

  private _setStream(stream: LogStream): void {
    this._stream = stream;
    for (const [name, tab] of this._tabs) {
      tab.classList.toggle('cj-mod-active', name === stream);
      tab.setAttribute('aria-selected', String(name === stream));
    }
    this._logsComplete = false;
    this._logRequest++;
    this._logText.textContent = '';
    void this._loadLogs();
  }

  /** Fetch the selected job's log unless it was already read in full after the job ended. */
  private async _loadLogs(): Promise<void> {
    const job = this._selected;
    if (!job || this._logsComplete) {
      return;
    }
    const ticket = ++this._logRequest;
    const stream = this._stream;
    let text: string;
    let complete = false;
    try {
      const logs = await jobLogs(job.id, stream, LOG_TAIL);
      complete = !isActive(logs.state);
      text = logs.text || `(no ${stream} output${complete ? '' : ' yet'})`;
    } catch (error) {
      text = `Could not read the ${stream} log: ${(error as Error).message}`;
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
