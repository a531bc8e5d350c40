import { LabIcon } from '@jupyterlab/ui-components';

/** Three stacked servers: the sidebar tab of the job list. */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <path class="jp-icon3" fill="#616161" fill-rule="evenodd" d="
    M3 3h18v5H3z M5.5 4.75h2v1.5h-2z
    M3 10h18v5H3z M5.5 11.75h2v1.5h-2z
    M3 17h18v5H3z M5.5 18.75h2v1.5h-2z"/>
</svg>`;

export const clusterIcon = new LabIcon({
  name: 'clusterjupyter:cluster',
  svgstr
});
