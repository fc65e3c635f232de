// Building the page: every piece of text goes in through textContent, never as HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value == null || value === "") continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "value") node.value = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function money(value) {
  if (value == null) return "–";
  if (value === 0) return "$0";
  return value < 0.01 ? `$${value.toPrecision(3)}` : `$${value.toFixed(4)}`;
}

export function num(value) {
  return value == null ? "–" : Number(value).toLocaleString("en-US");
}

export function ms(value) {
  return value == null ? "–" : `${Number(value).toFixed(value < 10 ? 1 : 0)} ms`;
}

export function pct(value) {
  return value == null ? "–" : `${(value * 100).toFixed(1)}%`;
}

export function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}

// A table from rows and column specs {label, value(row), num?, sort?}; click a header to sort by it.
export function table(columns, rows, { onRow, caption, id } = {}) {
  let sortBy = null;
  let descending = false;
  const body = el("tbody");
  const head = el("tr");
  const fill = () => {
    clear(body);
    const sorted = [...rows];
    if (sortBy) {
      const key = sortBy.sort || sortBy.value;
      sorted.sort((a, b) => {
        const x = key(a), y = key(b);
        const order = x == null ? -1 : y == null ? 1 : x < y ? -1 : x > y ? 1 : 0;
        return descending ? -order : order;
      });
    }
    for (const row of sorted) {
      const tr = el("tr", { class: onRow ? "clickable" : "" },
        columns.map((c) => {
          const shown = c.render ? c.render(row) : c.value(row);
          return el("td", { class: c.num ? "num" : "" }, shown);
        }));
      if (onRow) tr.addEventListener("click", () => onRow(row));
      body.append(tr);
    }
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, "Nothing here yet.")));
  };
  for (const c of columns) {
    const th = el("th", { class: `${c.num ? "num " : ""}sortable`, scope: "col" }, c.label);
    th.addEventListener("click", () => {
      descending = sortBy === c ? !descending : false;
      sortBy = c;
      fill();
    });
    head.append(th);
  }
  fill();
  return el("div", { class: "scroll" }, el("table", { id }, caption ? el("caption", { class: "muted" }, caption) : null,
    el("thead", {}, head), body));
}

export function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
