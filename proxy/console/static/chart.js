// Charts over time with the vendored uPlot (static/vendor, MIT): one line per series.
import uPlot from "/ui/vendor/uPlot.esm.js";
import { el } from "/ui/dom.js";

const COLORS = ["#0b62d6", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#1098ad", "#c92a2a", "#5c7cfa"];

// ``times``: epoch seconds; ``series``: [{label, values}] aligned with times; ``range``: fixed [min, max] of y.
export function lineChart(title, times, series, format, range) {
  const box = el("div", { class: "card chart" }, el("h2", {}, title));
  if (!times.length) {
    box.append(el("p", { class: "muted" }, "No requests in this period."));
    return box;
  }
  const holder = el("div");
  box.append(holder);
  const draw = () => {
    const width = Math.max(240, box.clientWidth - 24);
    const opts = {
      width, height: 180, legend: { show: true },
      scales: { x: { time: true }, y: range ? { range } : {} },
      axes: [{}, { values: (u, ticks) => ticks.map((t) => (format ? format(t) : t)), size: 76 }],
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2,
                                               points: { show: true, size: 4 } }))],
    };
    holder.replaceChildren();
    new uPlot(opts, [times, ...series.map((s) => s.values)], holder);
  };
  requestAnimationFrame(draw);
  return box;
}
