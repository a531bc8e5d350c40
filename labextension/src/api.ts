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

/** One journal record, as JobRecord.to_json() sends it. Times are Unix seconds. */
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
  cell: string;
  notebook: string;
  host: string;
  result_status: string;
}

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

export async function listJobs(states: JobState[]): Promise<IJob[]> {
  const query: Record<string, string> = {};
  if (states.length) {
    query.state = states.join(',');
  }
  const body = await request<{ jobs: IJob[] }>(['jobs'], query);
  return body.jobs;
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
