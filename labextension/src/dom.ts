/** Small DOM helpers shared by the sidebar, the queue view and the notebook outputs. */

/** A new `tag` element with a class, an optional `data-testid` and optional text. */
export function element<K extends keyof HTMLElementTagNameMap>(
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
