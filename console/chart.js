// Inline SVG charts: bar charts over days with labelled axes and units, horizontal bars by
// category, and budget gauges. Each chart is a <figure> with a caption and an SVG <title>, and each
// bar has a <title> with its exact value, so the figures are readable without colour or a mouse.

const NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/**
 * A "nice" axis maximum and step (1, 2 or 5 times a power of ten) covering `max` in ~4 ticks;
 * counts (`integer`) never get fractional ticks.
 */
export function niceScale(max, integer = false) {
  const raw = max > 0 ? max / 4 : 0.25;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  if (integer) step = Math.max(step, 1);
  return { top: Math.max(Math.ceil(max / step), 1) * step, step };
}

function figure(caption, svg, label) {
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const fig = document.createElement('figure');
  fig.className = 'chart';
  const cap = document.createElement('figcaption');
  cap.textContent = caption;
  fig.append(cap, svg);
  return fig;
}

/**
 * Vertical bars, one per point: `points` = [{label, value}], `unit` names the y axis, `fmt`
 * formats a value, `tickFmt` an axis tick, `integer` marks counts.
 */
export function barChart({ title, points, unit, fmt, tickFmt = fmt, integer = false }) {
  const W = 480;
  const H = 220;
  const left = 64;
  const bottom = 40;
  const top = 14;
  const plotW = W - left - 10;
  const plotH = H - top - bottom;
  const max = Math.max(0, ...points.map((p) => Number(p.value) || 0));
  const { top: yTop, step } = niceScale(max, integer);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'bars', preserveAspectRatio: 'xMidYMid meet' });
  svg.append(s('title', {}, `${title} (${unit})`));
  for (let v = 0; v <= yTop + step / 2; v += step) {
    const y = top + plotH - (v / yTop) * plotH;
    svg.append(s('line', { x1: left, x2: W - 10, y1: y, y2: y, class: 'grid' }));
    svg.append(s('text', { x: left - 6, y: y + 4, class: 'tick', 'text-anchor': 'end' }, tickFmt(v)));
  }
  svg.append(s('text', { x: 12, y: top + plotH / 2, class: 'axis-label', 'text-anchor': 'middle', transform: `rotate(-90 12 ${top + plotH / 2})` }, unit));
  const slot = plotW / Math.max(points.length, 1);
  const every = Math.ceil(points.length / 6);
  points.forEach((p, i) => {
    const v = Number(p.value) || 0;
    const bh = (v / yTop) * plotH;
    const x = left + i * slot + slot * 0.15;
    const bar = s('rect', { x, y: top + plotH - bh, width: Math.max(slot * 0.7, 1), height: Math.max(bh, v > 0 ? 1 : 0), class: 'bar' });
    bar.append(s('title', {}, `${p.label}: ${fmt(v)}`));
    svg.append(bar);
    // Counted back from the last point, so that the latest day is always labelled.
    if ((points.length - 1 - i) % every === 0) {
      svg.append(s('text', { x: x + slot * 0.35, y: H - bottom + 16, class: 'tick', 'text-anchor': 'middle' }, p.short || p.label));
    }
  });
  svg.append(s('line', { x1: left, x2: W - 10, y1: top + plotH, y2: top + plotH, class: 'axis' }));
  svg.append(s('line', { x1: left, x2: left, y1: top, y2: top + plotH, class: 'axis' }));
  const total = points.reduce((a, p) => a + (Number(p.value) || 0), 0);
  return figure(`${title} — total ${fmt(total)}`, svg, `${title}: ${points.map((p) => `${p.label} ${fmt(Number(p.value) || 0)}`).join(', ')}`);
}

/** Horizontal bars, one per category, each labelled with its name and value. */
export function hbarChart({ title, rows, unit, fmt, integer = false, empty = 'No usage in this period.' }) {
  const W = 480;
  const rowH = 24;
  const left = 130;
  const right = 90;
  const H = Math.max(rows.length, 1) * rowH + 30;
  const max = Math.max(0, ...rows.map((r) => Number(r.value) || 0));
  const { top: xTop } = niceScale(max, integer);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'hbars' });
  svg.append(s('title', {}, `${title} (${unit})`));
  rows.forEach((r, i) => {
    const v = Number(r.value) || 0;
    const y = 8 + i * rowH;
    const bw = (v / xTop) * (W - left - right);
    svg.append(s('text', { x: left - 8, y: y + 15, class: 'tick', 'text-anchor': 'end' }, r.label));
    const bar = s('rect', { x: left, y, width: Math.max(bw, v > 0 ? 1 : 0), height: rowH - 8, class: 'bar' });
    bar.append(s('title', {}, `${r.label}: ${fmt(v)}`));
    svg.append(bar);
    svg.append(s('text', { x: left + bw + 6, y: y + 15, class: 'value' }, fmt(v)));
  });
  svg.append(s('line', { x1: left, x2: left, y1: 4, y2: H - 22, class: 'axis' }));
  svg.append(s('text', { x: left, y: H - 6, class: 'axis-label' }, `${unit}, 0 to ${fmt(xTop)}`));
  if (!rows.length) svg.append(s('text', { x: left + 8, y: 22, class: 'tick' }, empty));
  return figure(title, svg, `${title}: ${rows.map((r) => `${r.label} ${fmt(Number(r.value) || 0)}`).join(', ') || empty}`);
}

/**
 * A budget gauge: spent, then reserved (in-flight requests), then remaining, on one bar against
 * the limit, with each figure written out beside it.
 */
export function gauge({ title, limit, spent, reserved, remaining, fmt }) {
  const W = 640;
  const H = 64;
  const barW = W - 20;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'gauge' });
  const unlimited = limit === null || limit === undefined;
  svg.append(s('title', {}, `${title}: ${fmt(spent)} spent, ${fmt(reserved)} reserved, ${unlimited ? 'no limit' : `${fmt(remaining)} remaining of ${fmt(limit)}`}`));
  svg.append(s('rect', { x: 10, y: 8, width: barW, height: 22, class: 'gauge-track' }));
  if (!unlimited && limit > 0) {
    const sw = Math.min(spent / limit, 1) * barW;
    const rw = Math.min(reserved / limit, 1 - sw / barW) * barW;
    svg.append(s('rect', { x: 10, y: 8, width: Math.max(sw, 0), height: 22, class: spent >= limit ? 'gauge-over' : 'gauge-spent' }));
    svg.append(s('rect', { x: 10 + sw, y: 8, width: Math.max(rw, 0), height: 22, class: 'gauge-reserved' }));
  }
  const pctText = unlimited || !(limit > 0) ? '' : ` (${Math.round((spent / limit) * 100)} % used)`;
  svg.append(s('text', { x: 10, y: 50, class: 'tick' }, `0`));
  svg.append(s('text', { x: W - 10, y: 50, class: 'tick', 'text-anchor': 'end' }, unlimited ? 'no limit' : `${fmt(limit)} limit`));
  const fig = figure(title, svg, svg.firstChild.textContent);
  const legend = document.createElement('dl');
  legend.className = 'gauge-legend';
  for (const [k, v, cls] of [['Spent', fmt(spent) + pctText, 'spent'], ['Reserved', fmt(reserved), 'reserved'], ['Remaining', unlimited ? 'no limit' : fmt(remaining), 'remaining']]) {
    const dt = document.createElement('dt');
    const sw = document.createElement('span');
    sw.className = `swatch swatch-${cls}`;
    sw.setAttribute('aria-hidden', 'true');
    dt.append(sw, k);
    const dd = document.createElement('dd');
    dd.textContent = v;
    legend.append(dt, dd);
  }
  fig.append(legend);
  return fig;
}
