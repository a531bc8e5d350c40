/**
 * The queue view (main area): a scheduler's own queue for one profile — sortable by any
 * column, filtered by a text, several jobs selected at once to cancel, hold or release.
 *
 * The queue is read when the view opens, on "Refresh", after an action, and every 10 s while
 * the view is visible (a scheduler query each time: not faster).
 */
import { showDialog, Dialog } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  getQueue,
  IQueueEntry,
  listProfiles,
  QUEUE_ACTIONS,
  QueueAction,
  queueAction
} from './api';
import { element } from './dom';

const POLL_INTERVAL = 10000;

type Column = keyof Pick<
  IQueueEntry,
  'native_id' | 'name' | 'user' | 'state' | 'elapsed' | 'partition' | 'reason'
>;

const COLUMNS: ReadonlyArray<[Column, string]> = [
  ['native_id', 'Job id'],
  ['name', 'Name'],
  ['user', 'User'],
  ['state', 'State'],
  ['elapsed', 'Time'],
  ['partition', 'Partition'],
  ['reason', 'Reason']
];

/** Orders queue entries by a column; numbers (job ids, times) compare as numbers. */
export function compareEntries(a: IQueueEntry, b: IQueueEntry, column: Column): number {
  const x = String(a[column] ?? '');
  const y = String(b[column] ?? '');
  return x.localeCompare(y, undefined, { numeric: true, sensitivity: 'base' });
}

export class QueueView extends Widget {
  private _profile = element('select', 'cj-Filter', 'cj-queue-profile');
  private _allUsers = element('input', '', 'cj-queue-all-users');
  private _search = element('input', 'cj-Search', 'cj-queue-filter');
  private _refresh = element('button', 'jp-Button cj-QueueButton', 'cj-queue-refresh', 'Refresh');
  private _buttons = new Map<QueueAction, HTMLButtonElement>();
  private _message = element('div', 'cj-Queue-message', 'cj-queue-message');
  private _table = element('table', 'cj-QueueTable', 'cj-queue-table');
  private _body = element('tbody', '');
  private _all = element('input', '', 'cj-queue-select-all');
  private _entries: IQueueEntry[] = [];
  private _checked = new Set<string>();
  private _sort: Column = 'native_id';
  private _descending = false;
  private _poll: Poll;

  constructor() {
    super();
    this.id = 'clusterjupyter-queue';
    this.addClass('cj-QueueView');
    this.title.label = 'Cluster queue';
    this.title.closable = true;

    const bar = element('div', 'cj-Queue-bar');
    this._profile.title = 'The profile whose scheduler is asked';
    this._profile.addEventListener('change', () => {
      this._checked.clear();
      void this.refresh();
    });
    this._allUsers.type = 'checkbox';
    const allLabel = element('label', 'cj-Queue-check');
    allLabel.append(this._allUsers, document.createTextNode(' all users'));
    this._allUsers.addEventListener('change', () => void this.refresh());
    this._search.type = 'search';
    this._search.placeholder = 'Filter (id, name, user, state, …)';
    this._search.addEventListener('input', () => this._draw());
    this._refresh.addEventListener('click', () => void this.refresh());
    bar.append(this._profile, allLabel, this._search, this._refresh);
    for (const action of QUEUE_ACTIONS) {
      const b = element(
        'button',
        `jp-Button cj-QueueButton cj-QueueButton-${action}`,
        `cj-queue-${action}`,
        action[0].toUpperCase() + action.slice(1)
      );
      b.title = `${action} the selected jobs`;
      b.addEventListener('click', () => void this._act(action));
      this._buttons.set(action, b);
      bar.append(b);
    }

    const head = element('thead', '');
    const tr = element('tr', '');
    const th = element('th', 'cj-Queue-select');
    this._all.type = 'checkbox';
    this._all.title = 'Select every job shown';
    this._all.addEventListener('change', () => {
      for (const e of this._visible()) {
        if (this._all.checked) {
          this._checked.add(e.native_id);
        } else {
          this._checked.delete(e.native_id);
        }
      }
      this._draw();
    });
    th.append(this._all);
    tr.append(th);
    for (const [column, label] of COLUMNS) {
      const cell = element('th', 'cj-Queue-sortable', `cj-queue-sort-${column}`, label);
      cell.title = `Sort by ${label.toLowerCase()}`;
      cell.addEventListener('click', () => {
        this._descending = this._sort === column ? !this._descending : false;
        this._sort = column;
        this._draw();
      });
      tr.append(cell);
    }
    head.append(tr);
    this._table.append(head, this._body);
    const scroller = element('div', 'cj-Queue-scroll');
    scroller.append(this._table);
    this.node.append(bar, this._message, scroller);

    this._poll = new Poll({
      factory: () => this._read(),
      frequency: { interval: POLL_INTERVAL, backoff: true, max: 60 * 1000 },
      name: 'clusterjupyter:queue',
      standby: () => !this.isVisible || 'when-hidden'
    });
    void this._loadProfiles();
  }

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

  private async _loadProfiles(): Promise<void> {
    try {
      const profiles = await listProfiles();
      this._profile.textContent = '';
      for (const p of profiles) {
        const option = element('option', '', undefined, `${p.name} (${p.scheduler})`);
        option.value = p.name;
        option.selected = p.default;
        this._profile.append(option);
      }
      void this.refresh();
    } catch (error) {
      this._say(`Could not read the profiles: ${(error as Error).message}`, true);
    }
  }

  private async _read(): Promise<void> {
    const profile = this._profile.value;
    if (!profile) {
      return;
    }
    try {
      const queue = await getQueue(profile, this._allUsers.checked);
      if (queue.profile !== this._profile.value) {
        return;
      }
      this._entries = queue.queue;
      const present = new Set(this._entries.map(e => e.native_id));
      this._checked = new Set([...this._checked].filter(id => present.has(id)));
      const n = this._entries.length;
      this._say(n ? `${n} job${n === 1 ? '' : 's'} in the queue of ${profile} (${queue.scheduler})` : `The queue of ${profile} is empty.`);
    } catch (error) {
      this._entries = [];
      this._say(`Could not read the queue of ${profile}: ${(error as Error).message}`, true);
      this._draw();
      throw error;
    }
    this._draw();
  }

  private _visible(): IQueueEntry[] {
    const words = this._search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = this._entries.filter(e => {
      const text = COLUMNS.map(([c]) => String(e[c] ?? '')).join(' ').toLowerCase();
      return words.every(w => text.includes(w));
    });
    shown.sort((a, b) => compareEntries(a, b, this._sort) * (this._descending ? -1 : 1));
    return shown;
  }

  private _draw(): void {
    const shown = this._visible();
    this._body.textContent = '';
    for (const e of shown) {
      const tr = element('tr', 'cj-QueueRow', 'cj-queue-row');
      tr.dataset.nativeId = e.native_id;
      const td = element('td', 'cj-Queue-select');
      const box = element('input', '', 'cj-queue-check');
      box.type = 'checkbox';
      box.checked = this._checked.has(e.native_id);
      box.addEventListener('change', () => {
        if (box.checked) {
          this._checked.add(e.native_id);
        } else {
          this._checked.delete(e.native_id);
        }
        this._updateButtons();
      });
      td.append(box);
      tr.append(td);
      for (const [column] of COLUMNS) {
        const value = String(e[column] ?? '');
        const cell = element('td', `cj-Queue-${column}`, undefined, value);
        cell.title = column === 'name' && e.job ? `${value}\njournal job ${e.job}` : value;
        if (column === 'state') {
          cell.textContent = '';
          const badge = element('span', `cj-Badge cj-Badge-${e.state}`, undefined, e.state);
          cell.append(badge);
          if (e.native && e.native.toLowerCase() !== e.state) {
            cell.append(document.createTextNode(` ${e.native}`));
          }
        }
        tr.append(cell);
      }
      this._body.append(tr);
    }
    for (const th of this._table.querySelectorAll('th.cj-Queue-sortable')) {
      const column = (th as HTMLElement).dataset.testid?.replace('cj-queue-sort-', '');
      th.classList.toggle('cj-mod-sorted', column === this._sort);
      th.setAttribute(
        'aria-sort',
        column === this._sort ? (this._descending ? 'descending' : 'ascending') : 'none'
      );
    }
    this._all.checked = shown.length > 0 && shown.every(e => this._checked.has(e.native_id));
    this._updateButtons();
  }

  private _updateButtons(): void {
    for (const b of this._buttons.values()) {
      b.disabled = this._checked.size === 0;
    }
  }

  private async _act(action: QueueAction): Promise<void> {
    const ids = [...this._checked];
    const profile = this._profile.value;
    if (!ids.length) {
      return;
    }
    if (action === 'cancel') {
      const answer = await showDialog({
        title: `Cancel ${ids.length} job${ids.length === 1 ? '' : 's'}?`,
        body: `${ids.join(', ')} on ${profile}: their outputs will not come back.`,
        buttons: [
          Dialog.cancelButton({ label: 'Keep them' }),
          Dialog.warnButton({ label: 'Cancel jobs' })
        ]
      });
      if (!answer.button.accept) {
        return;
      }
    }
    this._say(`${action} ${ids.join(', ')}…`);
    try {
      const failed = await queueAction(profile, action, ids);
      const bad = Object.entries(failed);
      this._checked.clear();
      await this._read().catch(() => undefined);
      if (bad.length) {
        this._say(bad.map(([id, why]) => `${action} ${id}: ${why}`).join('; '), true);
      } else {
        this._say(`${action}: done for ${ids.join(', ')} on ${profile}`);
      }
    } catch (error) {
      this._say(`${action} failed: ${(error as Error).message}`, true);
    }
  }

  private _say(text: string, error = false): void {
    this._message.textContent = text;
    this._message.classList.toggle('cj-mod-error', error);
  }
}
