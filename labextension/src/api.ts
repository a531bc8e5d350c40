/**
 * Client of the clusterjupyter server extension's REST routes.
 *
 * Every call goes through ServerConnection.makeRequest, which adds Jupyter's token and
 * XSRF headers.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The states a job can be in (clusterjupyter.states.JobState). */
export const JOB_STATES = [
  'pending',
  'running',
  'completed',
  'failed',
  'cancelled',
  'timeout',
  'out_of_memory',
  'lost'
] as const;

export type JobState = (typeof JOB_STATES)[number];

export const ACTIVE_STATES: ReadonlyArray<JobState> = ['pending', 'running'];

export const LOG_STREAMS = ['stdout', 'stderr', 'scheduler'] as const;

export type LogStream = (typeof LOG_STREAMS)[number];

/** Why a job did not complete (the journal's error record; a listing has the short form). */
export interface IJobError {
  type?: string;
  message?: string;
  exit_code?: number | null;
  signal?: string;
  limit?: string;
  reason?: string;
  traceback?: string;
  log_tail?: string;
}

/** One journal record, as the server's job_json() sends it. Times are Unix seconds. */
export interface IJob {
  id: string;
  name: string;
  profile: string;
  scheduler: string;
  state: JobState;
  native_id: string | null;
  reason: string;
  exit_code: number | null;
  submitted: number;
  started: number | null;
  finished: number | null;
  updated: number;
  elapsed: number | null;
  /** the cell's source: only in getJob(); listings carry `preview` */
  cell?: string;
  preview: string;
  notebook: string;
  /** the notebook's path under the server's root ('' if outside it or unknown) */
  notebook_path?: string;
  cell_id?: string;
  kernel_id?: string;
  host: string;
  result_status: string;
  error?: IJobError;
  /** why it did not complete, in words (failed jobs) */
  explanation?: string;
  /** the sweep this job is an element of (listings only) */
  sweep?: ISweepRef;
}

/** A sweep element's sweep: one journal record grouping the elements' jobs. */
export interface ISweepRef {
  id: string;
  name: string;
  size: number;
  /** the element's index and attempt (0, then one more per retry) */
  index: number;
  attempt: number;
  /** whether this job is its element's latest attempt */
  latest: boolean;
  /** the sweep's one state and its counts, over all its elements' latest attempts */
  state: JobState;
  /** how many elements the listing carries (those not completed first) */
  listed: number;
  counts: { done?: number; running?: number; pending?: number; failed?: number };
}

export interface IJobList {
  /** the server's clock, to show elapsed times in step with the kernel's */
  now: number;
  jobs: IJob[];
}

export interface IQueueEntry {
  native_id: string;
  name: string;
  user: string;
  state: JobState;
  native: string;
  elapsed: string;
  reason: string;
  partition: string;
  nodes: string;
  /** the journal's id when the entry is one of this user's jobs */
  job: string | null;
}

export interface IQueue {
  profile: string;
  scheduler: string;
  queue: IQueueEntry[];
}

export interface IProfile {
  name: string;
  scheduler: string;
  default: boolean;
  [key: string]: unknown;
}

export const QUEUE_ACTIONS = ['cancel', 'hold', 'release'] as const;

export type QueueAction = (typeof QUEUE_ACTIONS)[number];

export interface ILogs {
  id: string;
  stream: LogStream;
  state: JobState;
  text: string;
}

/** An error reply of the server, with its JSON message when it sent one. */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

export function isActive(state: JobState): boolean {
  return ACTIVE_STATES.includes(state);
}

async function request<T>(
  path: string[],
  query: Record<string, string> = {},
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const params = new URLSearchParams(query).toString();
  const url =
    URLExt.join(
      settings.baseUrl,
      'clusterjupyter',
      ...path.map(encodeURIComponent)
    ) + (params ? `?${params}` : '');
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let body: unknown = undefined;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  if (!response.ok) {
    const message =
      body && typeof body === 'object' && 'message' in body
        ? String((body as { message: unknown }).message)
        : `${response.status} ${response.statusText}`;
    throw new RequestError(message, response.status);
  }
  return body as T;
}

export function listJobs(states: JobState[]): Promise<IJobList> {
  const query: Record<string, string> = {};
  if (states.length) {
    query.state = states.join(',');
  }
  return request<IJobList>(['jobs'], query);
}

/** One job in full: its cell and why it failed. */
export function getJob(id: string): Promise<IJob> {
  return request<IJob>(['jobs', id]);
}

export async function listProfiles(): Promise<IProfile[]> {
  return (await request<{ profiles: IProfile[] }>(['profiles'])).profiles;
}

export function getQueue(profile: string, allUsers = false): Promise<IQueue> {
  return request<IQueue>(['queue'], {
    profile,
    all_users: allUsers ? '1' : '0'
  });
}

/** Cancel, hold or release scheduler jobs; returns the ids that failed, with why. */
export async function queueAction(
  profile: string,
  action: QueueAction,
  ids: string[]
): Promise<Record<string, string>> {
  const body = await request<{ failed: Record<string, string> }>(
    ['queue', profile, action],
    {},
    { method: 'POST', body: JSON.stringify({ ids }) }
  );
  return body.failed;
}

export function jobLogs(
  id: string,
  stream: LogStream,
  tail = 200
): Promise<ILogs> {
  return request<ILogs>(['jobs', id, 'logs'], { stream, tail: String(tail) });
}

export function cancelJob(id: string): Promise<IJob> {
  return request<IJob>(['jobs', id, 'cancel'], {}, { method: 'POST' });
}

/** A notebook (or folder) was renamed: its jobs follow. Returns how many moved. */
export async function renameNotebook(oldPath: string, newPath: string): Promise<number> {
  const body = await request<{ moved: number }>(
    ['notebooks', 'rename'],
    {},
    { method: 'POST', body: JSON.stringify({ old: oldPath, new: newPath }) }
  );
  return body.moved;
}
