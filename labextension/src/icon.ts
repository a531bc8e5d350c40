import { LabIcon } from '@jupyterlab/ui-components';

/** A notebook cell (the bracket) sent to a cluster (the grid of nodes): the job list. */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M2 4h4v2H4v12h2v2H2z"/>
    <rect x="9" y="4" width="5" height="5" rx="1"/>
    <rect x="16" y="4" width="5" height="5" rx="1"/>
    <rect x="9" y="11" width="5" height="5" rx="1"/>
    <rect x="16" y="11" width="5" height="5" rx="1"/>
    <rect x="9" y="18" width="12" height="2" rx="1"/>
  </g>
</svg>`;

export const clusterIcon = new LabIcon({
  name: 'clusterjupyter:cluster',
  svgstr
});
