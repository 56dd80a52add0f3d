// Gantry dashboard: a single-page app over the controller's /v1 API.
// No build step: DOM helpers, charts drawn by the vendored uPlot
// (vendor/uPlot.iife.min.js, the global uPlot; see make dashboard-vendor)
// and four pages (jobs, one job live, runs compared, nodes), routed on
// location.pathname.
'use strict';
(() => {
  const TOKEN_KEY = 'gantry.token';
  const POLL_MS = 2000;
  const DRAW_MS = 200; // charts redraw at most 5 times a second
  const HISTORY_PAGE = 5000; // points per GET /metrics page
  // A job page fetches the points older than the live snapshot one by one
  // up to DOWNSAMPLE_ABOVE of them; beyond, it asks the controller for
  // DOWNSAMPLE_POINTS min/max/last buckets per metric over the whole run
  // (GET /metrics?max_points=N&keys=…, at most DOWNSAMPLE_KEYS keys a
  // request, the API's cap), so a run of millions of points costs the
  // browser a few thousand and a spike stays visible.
  const DOWNSAMPLE_ABOVE = 5000;
  const DOWNSAMPLE_POINTS = 1000;
  const DOWNSAMPLE_KEYS = 64;
  // GPU samples kept per job page: all a node stores (an hour at 1 Hz),
  // so an ended job's page can show its whole window.
  const GPU_KEEP = 3600;
  const STATES = ['queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'lost'];
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'lost']);
  const PALETTE = ['#1d6fd6', '#d9480f', '#2b8a3e', '#862e9c', '#c2255c', '#0b7285', '#e67700', '#495057'];

  // ---------- small helpers ----------

  class AuthError extends Error {}
  class HTTPError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // el builds a DOM element; attrs starting with "on" become listeners.
  // Text is always set as text, never parsed as HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    append(e, children);
    return e;
  }

  function append(parent, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      parent.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function replace(parent, ...children) {
    parent.replaceChildren();
    append(parent, children);
  }

  function stateBadge(state, id) {
    const s = state || 'unknown';
    return el('span', { class: 'state state-' + s, id, 'data-state': s }, s);
  }

  // queueReason shows why a queued job waits (the API computes it on
  // every read); nothing for other states.
  function queueReason(j, id) {
    if (j.state !== 'queued' || !j.reason) return null;
    return el('div', { class: 'reason', id }, j.reason);
  }

  // healthBadges shows a job's health conditions (stalled, hung,
  // idle_gpus), each with its evidence as the tooltip; nothing when none.
  function healthBadges(j, id) {
    const cs = j.conditions || [];
    if (!cs.length) return null;
    return el('span', { class: 'health', id }, ...cs.map((c) =>
      el('span', { class: 'cond cond-' + c.kind, title: c.evidence || '', 'data-condition': c.kind },
        c.kind + (c.gpus && c.gpus.length ? ' (GPU ' + c.gpus.join(', ') + ')' : ''))));
  }

  function jobLink(id) {
    return el('a', { href: '/jobs/' + encodeURIComponent(id), 'data-link': true, class: 'mono' }, id);
  }

  // fmtNum renders a metric value: integers whole, others with 4-5
  // significant digits, tiny and huge ones in exponent form.
  function fmtNum(v) {
    if (typeof v !== 'number' || !isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (Number.isInteger(v) && a < 1e15) return String(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e7)) return v.toExponential(3);
    if (a >= 1000) return v.toFixed(1);
    return String(Number(v.toPrecision(5)));
  }

  // fmtExact renders a value for the final table, enough to compare runs.
  function fmtExact(v) {
    if (typeof v !== 'number' || !isFinite(v)) return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
    return String(Number(v.toPrecision(8)));
  }

  // fmtAxis renders a tick compactly: 1.2k, 3M, 0.0003 as 3e-4.
  function fmtAxis(v) {
    const a = Math.abs(v);
    if (a === 0) return '0';
    if (a >= 1e9) return Number((v / 1e9).toPrecision(3)) + 'G';
    if (a >= 1e6) return Number((v / 1e6).toPrecision(3)) + 'M';
    if (a >= 1e4) return Number((v / 1e3).toPrecision(3)) + 'k';
    if (a < 1e-3) return v.toExponential(1);
    return String(Number(v.toPrecision(4)));
  }

  function fmtBytesGiB(b) {
    return (b / 2 ** 30).toFixed(1);
  }

  function parseTime(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return isNaN(t) ? null : t;
  }

  function pad2(n) {
    return String(n).padStart(2, '0');
  }

  function fmtClock(ms) {
    const d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  function fmtTime(iso) {
    const t = parseTime(iso);
    if (t === null) return '–';
    const d = new Date(t);
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + fmtClock(t);
  }

  function fmtDur(ms) {
    if (ms === null || ms === undefined || ms < 0) return '–';
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + pad2(s % 60) + 's';
    const h = Math.floor(m / 60);
    if (h < 48) return h + 'h ' + pad2(m % 60) + 'm';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
  }

  function fmtAge(iso) {
    const t = parseTime(iso);
    return t === null ? '–' : fmtDur(Date.now() - t) + ' ago';
  }

  // jobDuration is run time so far (running) or in total (ended).
  function jobDuration(j) {
    const start = parseTime(j.started_at);
    if (start === null) return null;
    const end = parseTime(j.finished_at);
    return (end === null ? Date.now() : end) - start;
  }

  function jobStep(j) {
    const f = j.final_metrics || {};
    const l = j.latest_metrics || {};
    if ('step' in f) return f.step;
    if ('step' in l) return l.step;
    return null;
  }

  // sortedKeys puts "step" first, the rest by name.
  function sortedKeys(m) {
    return Object.keys(m).sort((a, b) => (a === 'step' ? -1 : b === 'step' ? 1 : a < b ? -1 : a > b ? 1 : 0));
  }

  // ---------- API access and the token ----------

  function getToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return ''; // storage disabled: run without a token
    }
  }

  function setToken(t) {
    try {
      if (t) localStorage.setItem(TOKEN_KEY, t);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      showTokenError('This browser refuses to store the token: ' + e.message);
    }
    document.getElementById('forget-token').hidden = !getToken();
  }

  // api fetches a /v1 path as JSON. A 401 opens the token form and throws
  // AuthError, so callers stop and the page reloads once a token is saved.
  async function api(path, opts) {
    const headers = { Accept: 'application/json' };
    // The API refuses writes without a JSON Content-Type (its CSRF guard).
    if (opts && opts.method && opts.method !== 'GET') headers['Content-Type'] = 'application/json';
    const tok = getToken();
    if (tok) headers.Authorization = 'Bearer ' + tok;
    const res = await fetch(path, Object.assign({}, opts, { headers }));
    if (res.status === 401) {
      askToken(tok ? 'The saved token was refused; enter another.' : '');
      throw new AuthError('this controller needs an API token');
    }
    let body = null;
    const text = await res.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (e) {
        throw new HTTPError(res.status, `${path}: answer is not JSON (HTTP ${res.status})`);
      }
    }
    if (!res.ok) throw new HTTPError(res.status, (body && body.error) || `${path}: HTTP ${res.status}`);
    return body;
  }

  function wsURL(path) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const tok = getToken();
    return proto + '//' + location.host + path + (tok ? '?token=' + encodeURIComponent(tok) : '');
  }

  function askToken(message) {
    const dlg = document.getElementById('token-dialog');
    if (!dlg.hidden) return;
    showTokenError(message);
    dlg.hidden = false;
    document.getElementById('token-input').focus();
  }

  function showTokenError(message) {
    const e = document.getElementById('token-error');
    e.textContent = message || '';
    e.hidden = !message;
  }

  function initToken() {
    document.getElementById('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = document.getElementById('token-input');
      setToken(input.value.trim());
      input.value = '';
      document.getElementById('token-dialog').hidden = true;
      route();
    });
    const forget = document.getElementById('forget-token');
    forget.hidden = !getToken();
    forget.addEventListener('click', () => {
      setToken('');
      route();
    });
  }

  // errorText turns a failure into a sentence for the page.
  function errorText(err) {
    if (err instanceof AuthError) return 'Waiting for an API token.';
    if (err instanceof HTTPError) return err.message;
    return 'Cannot reach the controller: ' + (err && err.message ? err.message : err);
  }

  // poller runs fn now and again `ms` after each run ends; errors go to
  // onError and polling goes on, except while a token is being asked for.
  function poller(fn, ms, onError) {
    let stopped = false;
    let timer = null;
    const run = async () => {
      timer = null;
      try {
        await fn();
        onError(null);
      } catch (err) {
        if (stopped) return;
        onError(err);
        if (err instanceof AuthError) return; // the token form reloads the page
      }
      if (!stopped) timer = setTimeout(run, ms);
    };
    run();
    return {
      stop() {
        stopped = true;
        if (timer) clearTimeout(timer);
      },
    };
  }

  function setConn(text, cls) {
    const c = document.getElementById('conn');
    c.hidden = !text;
    c.textContent = text || '';
    c.className = 'conn' + (cls ? ' ' + cls : '');
  }

  // ---------- charts (uPlot) ----------

  // Chart settings shared by every chart of a page and kept in this
  // browser, so that a user's smoothing and axes survive reloads.
  const SETTINGS_KEY = 'gantry.charts';
  const X_MODES = { step: 'Step', relative: 'Relative time', wall: 'Wall time' };

  function loadSettings() {
    const d = { smoothing: 0, log: false, x: 'step' };
    try {
      const s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}');
      if (typeof s.smoothing === 'number' && s.smoothing >= 0 && s.smoothing < 1) d.smoothing = s.smoothing;
      if (typeof s.log === 'boolean') d.log = s.log;
      if (s.x in X_MODES) d.x = s.x;
    } catch (e) {
      // unreadable or disabled storage: the defaults
    }
    return d;
  }

  function saveSettings(s) {
    try {
      localStorage.setItem(SETTINGS_KEY, JSON.stringify({ smoothing: s.smoothing, log: s.log, x: s.x }));
    } catch (e) {
      // not kept; the page still works
    }
  }

  const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');

  // theme reads the page's colours from its CSS variables: canvas drawing
  // cannot use var(), so charts are rebuilt when the colour scheme flips.
  function theme() {
    const cs = getComputedStyle(document.documentElement);
    const v = (n) => cs.getPropertyValue(n).trim();
    return { dark: darkQuery.matches, text: v('--text'), muted: v('--muted'), grid: v('--grid'), line: v('--line') };
  }

  // withAlpha turns #rrggbb into rgba() for faint strokes on the canvas.
  function withAlpha(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
  }

  // ema is TensorBoard's smoothing: an exponential moving average with
  // weight w, debiased so that the start is not pulled towards zero.
  function ema(ys, w) {
    if (!(w > 0)) return ys;
    const out = new Array(ys.length);
    let acc = 0;
    let n = 0;
    for (let i = 0; i < ys.length; i++) {
      const y = ys[i];
      if (y === null || !isFinite(y)) {
        out[i] = y;
        continue;
      }
      acc = acc * w + (1 - w) * y;
      n++;
      out[i] = acc / (1 - Math.pow(w, n));
    }
    return out;
  }

  // monotone returns (xs, ys) with xs strictly increasing, as uPlot needs:
  // a run whose step went back (a restart from a checkpoint) is sorted by
  // x, and of repeated xs the latest value is kept.
  function monotone(xs, ys) {
    let ok = true;
    for (let i = 1; i < xs.length && ok; i++) ok = xs[i] > xs[i - 1];
    if (ok) return { xs, ys };
    const idx = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b] || a - b);
    const ox = [];
    const oy = [];
    for (const i of idx) {
      if (ox.length && ox[ox.length - 1] === xs[i]) oy[oy.length - 1] = ys[i];
      else {
        ox.push(xs[i]);
        oy.push(ys[i]);
      }
    }
    return { xs: ox, ys: oy };
  }

  // align joins runs with different xs into uPlot's one-x-array table;
  // a run has null where it has no point (its line spans the gap).
  function align(runs) {
    if (runs.length === 1) return [runs[0].xs, runs[0].ys];
    const all = new Set();
    for (const r of runs) for (const x of r.xs) all.add(x);
    const xs = [...all].sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const cols = runs.map((r) => {
      const col = new Array(xs.length).fill(null);
      for (let i = 0; i < r.xs.length; i++) col[at.get(r.xs[i])] = r.ys[i];
      return col;
    });
    return [xs, ...cols];
  }

  function lastValue(col) {
    for (let i = (col ? col.length : 0) - 1; i >= 0; i--) if (col[i] !== null && col[i] !== undefined) return col[i];
    return null;
  }

  function fmtRel(s) {
    return fmtDur(s * 1000);
  }

  // ChartGroup is the charts of one page: their shared settings, a common
  // zoom (drag on any chart zooms all on the same x range), and the cursor
  // sync key uPlot uses to move every chart's cursor together.
  class ChartGroup {
    constructor(syncKey) {
      this.syncKey = syncKey;
      this.settings = loadSettings();
      this.charts = new Set();
      this.range = null; // [min, max] zoomed x range, or null for all
      this.onChange = () => {};
      this.onScheme = () => this.charts.forEach((c) => c.rebuild());
      darkQuery.addEventListener('change', this.onScheme);
    }

    add(c) {
      this.charts.add(c);
      return c;
    }

    // zoom sets the x range of the page's metric charts; null shows all
    // and also resets the GPU charts, which zoom on their own (their x is
    // time, not the metrics' step).
    zoom(r) {
      this.range = r;
      for (const c of this.charts) {
        if (r === null) c.ownRange = null;
        c.applyRange();
      }
    }

    set(k, v) {
      this.settings[k] = v;
      saveSettings(this.settings);
      if (k === 'x') this.range = null; // a range in steps means nothing in seconds
      this.onChange();
    }

    destroy() {
      darkQuery.removeEventListener('change', this.onScheme);
      for (const c of this.charts) c.destroy();
      this.charts.clear();
    }

    // controls is the bar that sets smoothing, scale and x axis.
    controls() {
      const s = this.settings;
      const smoothVal = el('span', { class: 'mono', id: 'smoothing-value' }, s.smoothing.toFixed(2));
      const slider = el('input', { type: 'range', min: 0, max: 0.99, step: 0.01, value: s.smoothing, id: 'smoothing', 'aria-label': 'Smoothing' });
      slider.addEventListener('input', () => {
        smoothVal.textContent = Number(slider.value).toFixed(2);
        this.set('smoothing', Number(slider.value));
      });
      const log = el('input', { type: 'checkbox', id: 'log-scale', checked: s.log });
      log.addEventListener('change', () => this.set('log', log.checked));
      const xsel = el('select', { id: 'x-axis', 'aria-label': 'X axis' },
        Object.entries(X_MODES).map(([k, v]) => el('option', { value: k, selected: s.x === k }, v)));
      xsel.addEventListener('change', () => this.set('x', xsel.value));
      const reset = el('button', { type: 'button', class: 'secondary', id: 'reset-zoom', onclick: () => this.zoom(null) }, 'Reset zoom');
      return el('div', { class: 'chart-controls' },
        el('label', {}, 'Smoothing ', slider, ' ', smoothVal),
        el('label', {}, log, ' Log scale'),
        el('label', {}, 'X axis ', xsel),
        reset,
        el('span', { class: 'muted hint' }, 'drag: zoom · shift-drag: pan · double-click: reset'));
    }
  }

  // Chart is one metric (or GPU quantity) over x for one or more runs,
  // drawn by uPlot. setRuns takes [{name, color, xs, ys, band}] in the
  // group's x units; band, when set, is {xs, lo, hi}: the min and max of
  // each downsampled bucket, drawn as a faint vertical segment under the
  // line so that a spike inside a bucket stays visible.
  class Chart {
    constructor(group, key, title, opts) {
      this.group = group;
      this.key = key;
      this.opts = Object.assign({ valueFmt: fmtNum, height: 190, smooth: true, time: false }, opts);
      this.runs = [];
      this.ownRange = null; // a GPU chart's zoom: [min, max] or null
      this.u = null;
      this.sig = '';
      this.plot = el('div', { class: 'plot' });
      this.empty = el('div', { class: 'chart-empty muted' }, 'no data yet');
      this.el = el('div', { class: 'chart', 'data-key': key, 'data-points': 0, 'data-series': 0 },
        el('div', { class: 'chart-head' }, el('span', { class: 'chart-title', title }, title)),
        this.plot, this.empty);
      group.add(this);
    }

    setRuns(runs) {
      this.runs = runs;
    }

    // xMode is how x reads here: GPU charts are always over wall time.
    xMode() {
      return this.opts.time ? 'wall' : this.group.settings.x;
    }

    destroy() {
      if (this.u) this.u.destroy();
      this.u = null;
      this.sig = '';
    }

    rebuild() {
      this.destroy();
      this.draw();
    }

    draw() {
      const s = this.group.settings;
      const log = s.log && !this.opts.time;
      const w = this.opts.smooth ? s.smoothing : 0;
      const drawn = [];
      let points = 0, buckets = 0, bands = 0, y0 = Infinity, y1 = -Infinity;
      for (const r of this.runs) {
        points += r.xs.length;
        if (r.band) {
          buckets += r.band.xs.length;
          if (r.band.lo.some((lo, i) => lo !== r.band.hi[i])) bands++;
          for (let i = 0; i < r.band.xs.length; i++) {
            y0 = Math.min(y0, r.band.lo[i]);
            y1 = Math.max(y1, r.band.hi[i]);
          }
        }
        for (const y of r.ys) {
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
        if (r.xs.length === 0) continue;
        const m = monotone(r.xs, r.ys);
        let ys = ema(m.ys, w);
        // A log axis cannot place zero or less: those points are gaps.
        if (log) ys = ys.map((y) => (y > 0 ? y : null));
        drawn.push({ run: r, xs: m.xs, ys, raw: w > 0 ? m.ys : null });
      }
      // What the chart holds, for tests and for anyone inspecting the page.
      const ds = this.el.dataset;
      ds.points = points;
      ds.buckets = buckets;
      ds.bands = bands;
      ds.series = drawn.length;
      ds.scale = log ? 'log' : 'linear';
      ds.smoothing = w;
      if (drawn.length) {
        ds.ymin = y0;
        ds.ymax = y1;
      }
      this.drawn = drawn;
      this.empty.hidden = drawn.length > 0;
      this.plot.hidden = drawn.length === 0;
      if (drawn.length === 0) return;
      const data = align(drawn);
      const th = theme();
      const sig = [drawn.map((d) => d.run.name + d.run.color).join('|'), log, this.xMode(), th.dark].join(';');
      if (!this.u || sig !== this.sig) {
        this.destroy();
        this.sig = sig;
        ds.theme = th.dark ? 'dark' : 'light';
        this.u = new uPlot(this.options(drawn, log, th), data, this.plot);
        this.applyRange();
      } else {
        // One redraw: setData alone would draw the whole x range first.
        this.u.batch(() => {
          this.u.setData(data);
          this.applyRange();
        });
      }
    }

    // zoomTo zooms this chart's x: a metric chart's range is the page's.
    zoomTo(r) {
      if (this.opts.time) {
        this.ownRange = r;
        this.applyRange();
      } else {
        this.group.zoom(r);
      }
    }

    applyRange() {
      const u = this.u;
      if (!u || !u.data[0].length) return;
      const xs = u.data[0];
      const zoom = this.opts.time ? this.ownRange : this.group.range;
      const r = zoom || [xs[0], xs[xs.length - 1]];
      // A single point still needs a span to be drawn at.
      let [min, max] = r[0] === r[1] ? [r[0] - 1, r[1] + 1] : r;
      // A few seconds of GPU samples would get sub-second ticks.
      if (this.opts.time && !zoom && max - min < 30) min = max - 30;
      u.setScale('x', { min, max });
      // The shown x range, for tests: zoom is shared by a page's charts.
      this.el.dataset.zoomed = zoom ? 1 : 0;
      this.el.dataset.xmin = min;
      this.el.dataset.xmax = max;
      this.el.dataset.xfirst = xs[0];
      this.el.dataset.xlast = xs[xs.length - 1];
    }

    width() {
      return Math.max(200, this.el.clientWidth - 22);
    }

    resize() {
      if (this.u) this.u.setSize({ width: this.width(), height: this.opts.height });
    }

    options(drawn, log, th) {
      const mode = this.xMode();
      const xName = mode === 'step' ? 'step' : mode === 'relative' ? 'time since start' : 'time';
      const xFmt = mode === 'step' ? fmtAxis : mode === 'relative' ? fmtRel : (v) => fmtClock(v * 1000);
      const axis = {
        stroke: th.muted,
        grid: { stroke: th.grid, width: 1 },
        ticks: { stroke: th.grid, width: 1 },
        font: '10px ' + getComputedStyle(document.body).getPropertyValue('--mono'),
        labelFont: '11px system-ui, sans-serif',
      };
      const valueFmt = this.opts.valueFmt;
      return {
        width: this.width(),
        height: this.opts.height,
        legend: { live: true },
        cursor: {
          sync: { key: this.group.syncKey + (this.opts.time ? ':time' : ':' + mode) },
          drag: { x: true, y: false, setScale: false },
          bind: {
            mousedown: (u, targ, handler) => (e) => {
              if (e.shiftKey && e.button === 0) {
                this.pan(e);
                return null;
              }
              return handler(e);
            },
            dblclick: () => () => {
              this.zoomTo(null);
              return null;
            },
          },
        },
        scales: {
          x: { time: mode === 'wall' },
          y: {
            distr: log ? 3 : 1,
            log: 10,
            range: (u, min, max) => this.yRange(u, min, max, log),
          },
        },
        axes: [
          Object.assign({}, axis, { label: xName, labelSize: 16, values: mode === 'wall' ? undefined : (u, vals) => vals.map(xFmt) }),
          Object.assign({}, axis, { label: this.opts.yLabel || this.key, labelSize: 16, size: 52, values: (u, vals) => vals.map((v) => (v === null ? '' : fmtAxis(v))) }),
        ],
        series: [
          { label: xName, value: (u, v, si, i) => (i === null ? 'last' : v === null || v === undefined ? '–' : mode === 'wall' ? fmtClock(v * 1000) : xFmt(v)) },
          ...drawn.map((d) => ({
            label: d.run.name,
            stroke: d.run.color,
            width: 1.6,
            spanGaps: true,
            // With the cursor off the chart the legend shows each run's
            // latest value, as the old chart header did.
            value: (u, v, si, i) => {
              if (i === null) v = lastValue(u.data[si]);
              return v === null || v === undefined ? '–' : valueFmt(v);
            },
          })),
        ],
        hooks: {
          drawAxes: [(u) => this.drawUnder(u)],
          setSelect: [(u) => this.selected(u)],
        },
      };
    }

    // yRange fits the visible data and, for downsampled history, the
    // buckets' min and max, so a spike sets the scale as it did before
    // it was summarized.
    yRange(u, min, max, log) {
      let lo = min, hi = max;
      const x0 = u.scales.x.min, x1 = u.scales.x.max;
      for (const d of this.drawn || []) {
        const b = d.run.band;
        for (let i = 0; b && i < b.xs.length; i++) {
          if (x0 !== undefined && x0 !== null && (b.xs[i] < x0 || b.xs[i] > x1)) continue;
          if (log && b.lo[i] <= 0) continue;
          if (lo === null || b.lo[i] < lo) lo = b.lo[i];
          if (hi === null || b.hi[i] > hi) hi = b.hi[i];
        }
      }
      if (this.opts.yMin !== undefined && !log) lo = Math.min(lo === null ? this.opts.yMin : lo, this.opts.yMin);
      if (this.opts.yMax !== undefined) hi = Math.max(hi === null ? this.opts.yMax : hi, this.opts.yMax);
      if (lo === null || hi === null) return log ? [1, 10] : [0, 1];
      if (log) return uPlot.rangeLog(lo, hi, 10, true);
      return uPlot.rangeNum(lo, hi, 0.1, true);
    }

    // drawUnder runs before uPlot draws the lines: the buckets' min–max
    // segments and, when smoothing, the raw values as a faint line.
    drawUnder(u) {
      const ctx = u.ctx;
      const { left, top, width, height } = u.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top, width, height);
      ctx.clip();
      ctx.lineWidth = Math.max(1, devicePixelRatio);
      const log = u.scales.y.distr === 3;
      for (const d of this.drawn || []) {
        const b = d.run.band;
        if (b) {
          ctx.strokeStyle = withAlpha(d.run.color, 0.45);
          ctx.beginPath();
          for (let i = 0; i < b.xs.length; i++) {
            if (b.lo[i] === b.hi[i] || (log && b.lo[i] <= 0)) continue;
            const x = u.valToPos(b.xs[i], 'x', true);
            ctx.moveTo(x, u.valToPos(b.lo[i], 'y', true));
            ctx.lineTo(x, u.valToPos(b.hi[i], 'y', true));
          }
          ctx.stroke();
        }
        if (d.raw) {
          ctx.strokeStyle = withAlpha(d.run.color, 0.25);
          ctx.beginPath();
          let pen = false;
          for (let i = 0; i < d.xs.length; i++) {
            const y = d.raw[i];
            if (y === null || !isFinite(y) || (log && y <= 0)) {
              pen = false;
              continue;
            }
            const px = u.valToPos(d.xs[i], 'x', true), py = u.valToPos(y, 'y', true);
            if (pen) ctx.lineTo(px, py);
            else ctx.moveTo(px, py);
            pen = true;
          }
          ctx.stroke();
        }
      }
      ctx.restore();
    }

    // selected turns a drag selection into the group's zoom.
    selected(u) {
      const s = u.select;
      if (s.width < 4) return;
      const min = u.posToVal(s.left, 'x');
      const max = u.posToVal(s.left + s.width, 'x');
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      this.zoomTo([min, max]);
    }

    // pan moves the x range with the pointer while shift is held down.
    pan(e) {
      const u = this.u;
      const x0 = e.clientX;
      const min0 = u.scales.x.min, max0 = u.scales.x.max;
      const perPx = (max0 - min0) / u.over.clientWidth;
      const move = (m) => {
        const dx = (m.clientX - x0) * perPx;
        this.zoomTo([min0 - dx, max0 - dx]);
      };
      const up = () => {
        document.removeEventListener('mousemove', move);
        document.removeEventListener('mouseup', up);
      };
      document.addEventListener('mousemove', move);
      document.addEventListener('mouseup', up);
    }
  }

  // ---------- pages ----------

  const app = () => document.getElementById('app');
  let current = null;

  function route() {
    if (current) current.stop();
    current = null;
    setConn('');
    const p = location.pathname;
    let m;
    let nav = '';
    if (p === '/' || p === '/jobs' || p === '/jobs/') {
      nav = 'jobs';
      current = jobsPage();
    } else if ((m = p.match(/^\/jobs\/([^/]+)\/?$/))) {
      nav = 'jobs';
      current = jobPage(decodeURIComponent(m[1]));
    } else if (p === '/compare' || p === '/compare/') {
      nav = 'jobs';
      const ids = (new URLSearchParams(location.search).get('jobs') || '').split(',').filter(Boolean);
      current = comparePage(ids);
    } else if (p === '/nodes' || p === '/nodes/') {
      nav = 'nodes';
      current = nodesPage();
    } else {
      replace(app(), el('div', { class: 'panel empty' }, 'No page at ' + p + '. ', el('a', { href: '/', 'data-link': true }, 'Jobs')));
      document.title = 'Not found · Gantry';
    }
    document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active', a.getAttribute('data-nav') === nav));
  }

  function navigate(href) {
    if (href !== location.pathname + location.search) history.pushState(null, '', href);
    route();
  }

  function compareHref(ids) {
    return '/compare?jobs=' + ids.map(encodeURIComponent).join(',');
  }

  // ----- jobs list -----

  // Jobs ticked for comparison, kept while the list re-renders and when
  // the user goes to a job and comes back.
  const picked = new Set();

  function jobsPage() {
    document.title = 'Jobs · Gantry';
    const count = el('span', { class: 'muted' });
    const err = el('p', { class: 'error', hidden: true });
    const tbody = el('tbody');
    const compareBtn = el('button', { type: 'button', id: 'compare', onclick: () => navigate(compareHref([...picked])) });
    const clearBtn = el('button', { type: 'button', class: 'secondary', onclick: () => { picked.clear(); syncPicked(); } }, 'Clear');
    function syncPicked() {
      compareBtn.textContent = picked.size < 2 ? 'Compare runs' : `Compare ${picked.size} runs`;
      compareBtn.disabled = picked.size < 2;
      compareBtn.title = picked.size < 2 ? 'Tick two or more jobs to overlay their metrics' : '';
      clearBtn.hidden = picked.size === 0;
      tbody.querySelectorAll('input[data-pick]').forEach((c) => { c.checked = picked.has(c.getAttribute('data-pick')); });
    }
    syncPicked();
    replace(app(),
      el('div', { class: 'page-head' }, el('h1', {}, 'Jobs'), count, el('span', { class: 'spacer' }), clearBtn, compareBtn),
      err,
      el('div', { class: 'panel' }, el('table', { id: 'jobs' },
        el('thead', {}, el('tr', {},
          el('th', { class: 'pick' }, ''), el('th', {}, 'ID'), el('th', {}, 'Name'), el('th', {}, 'State'), el('th', {}, 'Node'),
          el('th', {}, 'GPUs'), el('th', { class: 'num' }, 'Step'), el('th', { class: 'num' }, 'Points'),
          el('th', {}, 'Created'), el('th', { class: 'num' }, 'Duration'))),
        tbody)));
    const p = poller(async () => {
      const { jobs } = await api('/v1/jobs');
      jobs.sort((a, b) => (parseTime(b.created_at) || 0) - (parseTime(a.created_at) || 0) || (a.id < b.id ? 1 : -1));
      const byState = {};
      for (const j of jobs) byState[j.state] = (byState[j.state] || 0) + 1;
      count.textContent = jobs.length + ' jobs' + (jobs.length ? ' · ' +
        STATES.filter((s) => byState[s]).map((s) => byState[s] + ' ' + s).join(', ') : '');
      if (jobs.length === 0) {
        replace(tbody, el('tr', {}, el('td', { colspan: 10, class: 'empty' }, 'No jobs yet. Submit one with ', el('code', {}, 'gantry run job.yaml'), '.')));
        return;
      }
      replace(tbody, jobs.map((j) => el('tr', { 'data-job-id': j.id },
        el('td', { class: 'pick' }, el('input', {
          type: 'checkbox', 'data-pick': j.id, checked: picked.has(j.id), 'aria-label': 'Compare ' + (j.name || j.id),
          onchange: (e) => {
            if (e.target.checked) picked.add(j.id);
            else picked.delete(j.id);
            syncPicked();
          },
        })),
        el('td', {}, jobLink(j.id)),
        el('td', {}, j.name || '–'),
        el('td', {}, stateBadge(j.state), healthBadges(j), queueReason(j)),
        el('td', {}, j.node || '–'),
        el('td', {}, (j.gpus || []).join(',') || '–'),
        el('td', { class: 'num' }, jobStep(j) === null ? '–' : fmtExact(jobStep(j))),
        el('td', { class: 'num' }, j.points || 0),
        el('td', { title: fmtTime(j.created_at) }, fmtAge(j.created_at)),
        el('td', { class: 'num' }, fmtDur(jobDuration(j))))));
    }, POLL_MS, (e) => {
      err.hidden = !e;
      err.textContent = e ? errorText(e) : '';
    });
    return p;
  }

  // ----- one run's metrics -----

  function xOf(pt) {
    return pt.step === null || pt.step === undefined ? pt.seq : pt.step;
  }

  // RunData is one job's metric history in the browser: its points by
  // seq, per-key series, and for a long run the downsampled buckets that
  // stand for its older points. The job page feeds it from the live
  // WebSocket; the compare page by polling GET /metrics?after=.
  class RunData {
    constructor(id, isStopped, onChange) {
      this.id = id;
      // "JOB/rank/K" is rank K's own series of a multi-node job (the
      // compare page overlays ranks); a plain id is the job's (rank 0's).
      const m = /^(.*)\/rank\/(\d+)$/.exec(id);
      this.jobId = m ? m[1] : id;
      this.rank = m ? Number(m[2]) : 0;
      this.rankQuery = this.rank ? `&rank=${this.rank}` : '';
      this.stopped = isStopped;
      this.onChange = onChange;
      this.job = null;
      this.points = []; // by seq, no duplicates
      this.series = new Map(); // metric key → {seqs, xs, ts, ys} of the points above
      // Downsampled history of a long run: metric key → {cut, xs, ts, lo,
      // hi, last}, buckets for seqs up to cut (the points array holds later
      // ones). Empty for a short run, whose points are all fetched.
      this.hist = new Map();
      this.histCut = 0; // every metric's buckets cover the seqs up to here
      this.loading = false;
    }

    lastSeq() {
      return this.points.length ? this.points[this.points.length - 1].seq : this.histCut;
    }

    addToSeries(pt) {
      for (const [k, v] of Object.entries(pt.values || {})) {
        let s = this.series.get(k);
        if (!s) this.series.set(k, (s = { seqs: [], xs: [], ts: [], ys: [] }));
        s.seqs.push(pt.seq);
        s.xs.push(xOf(pt));
        s.ts.push(pt.ts);
        s.ys.push(v);
      }
    }

    // mergePoints folds points in by seq. New points past the last seq
    // (the live stream) append; anything older (history, a reconnect's
    // snapshot) merges and rebuilds the series.
    mergePoints(pts) {
      if (!pts || pts.length === 0) return;
      const last = this.points.length ? this.points[this.points.length - 1].seq : 0;
      if (pts.every((p, i) => p.seq > (i === 0 ? last : pts[i - 1].seq))) {
        for (const p of pts) {
          this.points.push(p);
          this.addToSeries(p);
        }
      } else {
        const bySeq = new Map(this.points.map((p) => [p.seq, p]));
        for (const p of pts) bySeq.set(p.seq, p);
        this.points = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
        this.series = new Map();
        for (const p of this.points) this.addToSeries(p);
      }
      this.onChange();
    }

    // loadHistory fills in the points older than before (a live
    // snapshot's first seq, or past the job's last seq). A few are
    // fetched as they are; for a long run, the older part comes as
    // downsampled buckets and only the points after the last whole bucket
    // are fetched.
    async loadHistory(before) {
      if (this.loading || before <= 1) return;
      this.loading = true;
      try {
        // Seqs up to from are already here: as points, or in buckets.
        let from = 0;
        for (let i = this.points.length - 1; i >= 0; i--) {
          if (this.points[i].seq < before) {
            from = this.points[i].seq;
            break;
          }
        }
        from = Math.max(from, Math.min(this.histCut, before - 1));
        if (before - 1 - from > DOWNSAMPLE_ABOVE) {
          const cut = await this.loadBuckets(before);
          // Without buckets (an older controller), only the newest points.
          from = cut === null ? before - 1 - DOWNSAMPLE_ABOVE : cut;
        }
        await this.loadPoints(from, before);
      } finally {
        this.loading = false;
      }
    }

    // loadPoints fetches the points with seqs in (after, before).
    async loadPoints(after, before) {
      const got = [];
      while (!this.stopped() && after < before - 1) {
        const limit = Math.min(HISTORY_PAGE, before - 1 - after);
        const page = await api(`/v1/jobs/${encodeURIComponent(this.jobId)}/metrics?after=${after}&limit=${limit}${this.rankQuery}`);
        const pts = (page.points || []).filter((p) => p.seq < before);
        if (pts.length === 0) break;
        got.push(...pts);
        after = page.next;
      }
      if (this.stopped()) return;
      this.mergePoints(got);
    }

    // loadBuckets replaces hist with the run's downsampled buckets that
    // end before seq before, and returns the last seq they cover (the
    // smallest such over the requests), or null when the controller has
    // no downsampling or the job no metric keys yet.
    async loadBuckets(before) {
      const j = this.job || {};
      const keys = [...new Set([...this.series.keys(), ...Object.keys(j.latest_metrics || {}), ...Object.keys(j.final_metrics || {})])]
        // "step" in latest_metrics is the last step, not a metric; and the
        // API splits keys=a,b on commas, so such a key cannot be named.
        .filter((k) => k !== 'step' && !k.includes(','));
      if (keys.length === 0) return null;
      const hist = new Map();
      let cut = Infinity;
      for (let i = 0; i < keys.length; i += DOWNSAMPLE_KEYS) {
        const names = keys.slice(i, i + DOWNSAMPLE_KEYS).map(encodeURIComponent).join(',');
        const r = await api(`/v1/jobs/${encodeURIComponent(this.jobId)}/metrics?max_points=${DOWNSAMPLE_POINTS}&keys=${names}${this.rankQuery}`);
        if (this.stopped()) return null;
        if (!r || !r.series || !r.bucket_seqs) return null;
        // Buckets are fixed seq ranges (i·w, (i+1)·w]: those wholly before
        // the snapshot are kept, and points follow the last of them. Each
        // request has its own w if the run grew in between.
        const w = r.bucket_seqs;
        const reqCut = Math.floor((before - 1) / w) * w;
        cut = Math.min(cut, reqCut);
        for (const [k, bs] of Object.entries(r.series)) {
          if (bs.length === 0) continue;
          const h = { cut: reqCut, xs: [], ts: [], lo: [], hi: [], last: [] };
          for (const b of bs) {
            if (b.last_seq > reqCut) break;
            h.xs.push(b.step === null || b.step === undefined ? b.last_seq : b.step);
            h.ts.push(b.ts);
            h.lo.push(b.min);
            h.hi.push(b.max);
            h.last.push(b.last);
          }
          hist.set(k, h);
        }
      }
      this.hist = hist;
      this.histCut = cut;
      this.onChange();
      return cut;
    }

    keys() {
      return [...new Set([...this.series.keys(), ...this.hist.keys()])].filter((k) => k !== 'total_steps');
    }

    // t0 is where relative time starts: the job's start, else its first point.
    t0() {
      const s = this.job && parseTime(this.job.started_at);
      if (s !== null && s !== undefined) return s / 1000;
      const first = this.points.length ? this.points[0].ts : 0;
      for (const h of this.hist.values()) if (h.ts.length) return Math.min(first || h.ts[0], h.ts[0]);
      return first;
    }

    // chartRun is one metric as a chart series in x mode m: its
    // downsampled buckets, if any, then the points after them. The line
    // runs through each bucket's last value; the band holds its min and max.
    chartRun(k, m, name, color) {
      const raw = this.series.get(k) || { seqs: [], xs: [], ts: [], ys: [] };
      const t0 = m === 'relative' ? this.t0() : 0;
      const xsOf = (o) => (m === 'step' ? o.xs : t0 ? o.ts.map((t) => t - t0) : o.ts);
      const h = this.hist.get(k);
      if (!h) return { name, color, xs: xsOf(raw), ys: raw.ys };
      let i = 0;
      while (i < raw.seqs.length && raw.seqs[i] <= h.cut) i++;
      const hx = xsOf(h);
      return {
        name, color,
        xs: hx.concat(xsOf(raw).slice(i)), ys: h.last.concat(raw.ys.slice(i)),
        band: { xs: hx, lo: h.lo, hi: h.hi },
      };
    }
  }

  // metricCharts keeps one chart per metric key in grid, in key order.
  function syncCharts(group, charts, grid, keys) {
    let changed = false;
    for (const k of keys) {
      if (!charts.has(k)) {
        charts.set(k, new Chart(group, k, k, {}));
        changed = true;
      }
    }
    if (changed) replace(grid, keys.map((k) => charts.get(k).el));
  }

  // ----- a job's log, followed live and read back by offset -----

  const LOG_TAIL = 256 << 10; // bytes shown when a page opens
  const LOG_PAGE = 256 << 10; // bytes per "earlier" click and per poll
  const LOG_KEEP = 4 << 20; // bytes kept in the page; older ones are dropped
  const LOG_POLL_MS = 1000;

  // logView polls GET /logs?offset= from where it last stopped, so it
  // follows a running job (no log frames on the live socket), and stops
  // once the API says the log is complete. It opens on the last LOG_TAIL
  // bytes; "Load earlier" reads the bytes before, by offset.
  function logView(id, isStopped, showError) {
    const pre = el('pre', { class: 'log log-view', id: 'log-view', tabindex: 0, 'data-bytes': 0, 'data-start': 0 });
    const status = el('span', { class: 'muted', id: 'log-status' });
    const follow = el('input', { type: 'checkbox', id: 'log-follow', checked: true });
    const earlier = el('button', { type: 'button', class: 'secondary', id: 'log-earlier', hidden: true, onclick: loadEarlier }, 'Load earlier');
    const panel = el('section', { class: 'panel', id: 'logs-panel' },
      el('div', { class: 'panel-head' }, el('h2', {}, 'Logs'), status, el('span', { class: 'spacer' }), earlier,
        el('label', {}, follow, ' Follow')),
      pre);
    let chunks = []; // [{offset, bytes, node}] in offset order
    let start = null; // offset of the first byte shown; null before the first read
    let next = 0;
    let timer = null;
    let busy = false;
    let done = false;

    function shownBytes() {
      return next - (start || 0);
    }

    function render() {
      pre.dataset.bytes = shownBytes();
      pre.dataset.start = start || 0;
      earlier.hidden = !start;
      status.textContent = start === null ? '' : `${fmtBytes(next)}${start ? ` (showing the last ${fmtBytes(shownBytes())})` : ''}${done ? ' · complete' : ''}`;
      if (start !== null && next === 0) status.textContent = done ? 'This job wrote no output.' : 'No output yet.';
    }

    pre.addEventListener('scroll', () => {
      // Scrolling up to read stops following; back at the end resumes.
      follow.checked = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    });
    follow.addEventListener('change', () => {
      if (follow.checked) pre.scrollTop = pre.scrollHeight;
    });

    async function poll() {
      timer = null;
      if (isStopped() || busy) return;
      busy = true;
      let more = false;
      try {
        if (start === null) {
          const j = await api('/v1/jobs/' + encodeURIComponent(id));
          start = next = Math.max(0, (j.log_bytes || 0) - LOG_TAIL);
        }
        const r = await api(`/v1/jobs/${encodeURIComponent(id)}/logs?offset=${next}&limit=${LOG_PAGE}`);
        if (isStopped()) return;
        if (r.data) {
          const node = document.createTextNode(r.data);
          pre.appendChild(node);
          chunks.push({ offset: next, bytes: r.next - next, node });
          while (shownBytes() - chunks[0].bytes > LOG_KEEP && chunks.length > 1) {
            const c = chunks.shift();
            c.node.remove();
            start = chunks[0].offset;
          }
          if (follow.checked) pre.scrollTop = pre.scrollHeight;
        }
        more = r.next > next && r.next - next >= LOG_PAGE;
        next = r.next;
        done = r.complete;
        showError(null);
      } catch (e) {
        showError(e);
        if (e instanceof AuthError) return;
      } finally {
        busy = false;
        render();
      }
      if (!done && !isStopped()) timer = setTimeout(poll, more ? 0 : LOG_POLL_MS);
    }

    async function loadEarlier() {
      if (!start || busy) return;
      busy = true;
      earlier.disabled = true;
      try {
        const from = Math.max(0, start - LOG_PAGE);
        const r = await api(`/v1/jobs/${encodeURIComponent(id)}/logs?offset=${from}&limit=${start - from}`);
        if (isStopped()) return;
        const node = document.createTextNode(r.data || '');
        const h = pre.scrollHeight;
        pre.insertBefore(node, pre.firstChild);
        chunks.unshift({ offset: from, bytes: start - from, node });
        start = from;
        pre.scrollTop += pre.scrollHeight - h; // the lines read stay in place
      } catch (e) {
        showError(e);
      } finally {
        busy = false;
        earlier.disabled = false;
        render();
      }
    }

    poll();
    return {
      el: panel,
      stop() {
        if (timer) clearTimeout(timer);
      },
    };
  }

  function fmtBytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
    return (n / 2 ** 20).toFixed(1) + ' MiB';
  }

  // ----- one job, live -----

  function jobPage(id) {
    document.title = id + ' · Gantry';
    let stopped = false;
    let ws = null;
    let retry = 0;
    let retryTimer = null;
    let drawTimer = null;
    let lastDraw = 0;
    let ended = false; // a final frame arrived
    let gotSnapshot = false; // a reconnect's snapshot loads no history again

    const run = new RunData(id, () => stopped, () => scheduleDraw());
    const st = {
      job: null,
      gpus: new Map(), // GPU index → {ts: [], util: [], mem: [], last: stat}
      gpuSeq: 0,
      gpuNote: '', // why there are no GPU charts for an ended job
      events: new Map(), // seq → event
    };
    const group = new ChartGroup('job:' + id);
    group.onChange = () => drawNow();
    const charts = new Map(); // key → Chart
    const gpuUtil = new Chart(group, 'gpu:utilization', 'GPU utilization %', { time: true, smooth: false, yLabel: '%', yMin: 0, yMax: 100, valueFmt: (v) => v.toFixed(0) + '%' });
    const gpuMem = new Chart(group, 'gpu:memory', 'GPU memory used (GiB)', { time: true, smooth: false, yLabel: 'GiB', yMin: 0, valueFmt: (v) => v.toFixed(1) + ' GiB' });
    const logs = logView(id, () => stopped, (e) => showError(e));

    const title = el('h1', {}, id);
    const stateHolder = el('span');
    const cancelBtn = el('button', { class: 'danger', type: 'button', hidden: true, onclick: cancel }, 'Cancel job');
    const err = el('p', { class: 'error', hidden: true });
    const facts = el('div', { class: 'facts' });
    const progress = el('div', { class: 'progress', hidden: true }, el('div'));
    const finalPanel = el('section', { class: 'panel final', id: 'final-panel', hidden: true });
    const chartGrid = el('div', { class: 'charts', id: 'metric-charts' });
    const metricsNote = el('p', { class: 'muted' }, 'Waiting for the first metrics…');
    const gpuTable = el('tbody');
    const gpuNote = el('p', { class: 'muted', id: 'gpu-note', hidden: true });
    const gpuPanel = el('section', { class: 'panel', id: 'gpu-panel', hidden: true },
      el('h2', {}, 'GPUs'), gpuNote,
      el('div', { class: 'charts' }, gpuUtil.el, gpuMem.el),
      el('table', { class: 'gpu-now' }, gpuHead(), gpuTable));
    // A multi-node job's ranks: node, GPUs, state and exit of each; the
    // charts show rank 0's metrics, the job's own.
    const ranksBody = el('tbody');
    const ranksPanel = el('section', { class: 'panel', id: 'ranks-panel', hidden: true },
      el('h2', {}, 'Ranks'),
      el('p', { class: 'muted', id: 'ranks-note' }),
      el('table', { id: 'ranks' }, el('thead', {}, el('tr', {},
        el('th', { class: 'num' }, 'Rank'), el('th', {}, 'Node'), el('th', {}, 'GPUs'), el('th', {}, 'State'),
        el('th', {}, 'Exit'), el('th', { class: 'num' }, 'Points'), el('th', {}, 'Latest'), el('th', {}, 'Error'))), ranksBody));
    // A requeued job's earlier attempts: where each ran, why a health
    // policy stopped it, and what it had reported.
    const attemptsBody = el('tbody');
    const attemptsPanel = el('section', { class: 'panel', id: 'attempts-panel', hidden: true },
      el('h2', {}, 'Earlier attempts'),
      el('p', { class: 'muted' }, 'Stopped by the requeue policy and run again. Their points and log are part of the job\'s, in order; ' +
        'a trainer that starts again from step 0 overlaps them when charted by step.'),
      el('table', { id: 'attempts' }, el('thead', {}, el('tr', {},
        el('th', { class: 'num' }, 'Attempt'), el('th', {}, 'Node'), el('th', {}, 'GPUs'), el('th', {}, 'Ran'),
        el('th', {}, 'Ended'), el('th', {}, 'Requeued after'), el('th', {}, 'Final metrics'))), attemptsBody));
    const eventsBody = el('tbody');
    const eventsPanel = el('section', { class: 'panel', id: 'events-panel', hidden: true },
      el('h2', {}, 'Events'),
      el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'Time'), el('th', {}, 'Kind'), el('th', { class: 'num' }, 'Count'), el('th', {}, 'Message'))), eventsBody));

    replace(app(),
      el('div', { class: 'page-head' }, title, stateHolder, el('span', { class: 'spacer' }), cancelBtn),
      err,
      el('section', { class: 'panel', id: 'job-header' }, facts, progress),
      ranksPanel,
      finalPanel,
      attemptsPanel,
      el('section', { class: 'panel' }, el('div', { class: 'panel-head' }, el('h2', {}, 'Metrics'), el('span', { class: 'spacer' }),
        el('button', { type: 'button', class: 'linkish', id: 'compare-with', onclick: () => { picked.add(id); navigate('/'); } }, 'Compare with other runs…')),
      group.controls(), metricsNote, chartGrid),
      gpuPanel,
      logs.el,
      eventsPanel);

    function showError(e) {
      err.hidden = !e;
      err.textContent = e ? errorText(e) : '';
    }

    // ---- state folding ----

    function addGPU(sample) {
      if (!sample || !st.job) return;
      if (sample.seq && sample.seq <= st.gpuSeq) return;
      st.gpuSeq = sample.seq || st.gpuSeq;
      const mine = new Set(st.job.gpus || []);
      for (const g of sample.gpus || []) {
        if (mine.size > 0 && !mine.has(g.index)) continue;
        let s = st.gpus.get(g.index);
        if (!s) st.gpus.set(g.index, (s = { ts: [], util: [], mem: [], last: null }));
        s.ts.push(sample.ts);
        s.util.push(g.utilization_pct);
        s.mem.push(g.memory_used_bytes / 2 ** 30);
        s.last = g;
        if (s.ts.length > GPU_KEEP) {
          s.ts.splice(0, s.ts.length - GPU_KEEP);
          s.util.splice(0, s.util.length - GPU_KEEP);
          s.mem.splice(0, s.mem.length - GPU_KEEP);
        }
      }
      scheduleDraw();
    }

    function addEvent(e) {
      if (!e) return;
      st.events.set(e.seq || st.events.size + 1, e);
      renderEvents();
    }

    function setJob(j) {
      if (!j) return;
      // Live state frames are built once for every watcher when a job
      // changes and carry no reason (it depends on other jobs and nodes);
      // keep the last one read over HTTP while the job is still queued.
      if (j.state === 'queued' && !j.reason && st.job && st.job.state === 'queued') j.reason = st.job.reason;
      st.job = j;
      run.job = j;
      renderHeader();
    }

    // ---- rendering ----

    function fact(k, v, id) {
      return el('div', { class: 'fact' }, el('div', { class: 'k' }, k), el('div', { class: 'v', id }, v));
    }

    function lastStep() {
      for (let i = run.points.length - 1; i >= 0; i--) {
        const s = run.points[i].step;
        if (s !== null && s !== undefined) return s;
      }
      return st.job ? jobStep(st.job) : null;
    }

    function totalSteps() {
      const s = run.series.get('total_steps');
      if (s && s.ys.length) return s.ys[s.ys.length - 1];
      const j = st.job || {};
      return (j.final_metrics || {}).total_steps || (j.latest_metrics || {}).total_steps || null;
    }

    function renderHeader() {
      const j = st.job;
      if (!j) return;
      document.title = (j.name || j.id) + ' · ' + j.state + ' · Gantry';
      replace(title, j.name || j.id, ' ', el('span', { class: 'muted mono' }, j.name ? j.id : ''));
      replace(stateHolder, stateBadge(j.state, 'job-state'));
      cancelBtn.hidden = TERMINAL.has(j.state) || j.cancel_requested;
      const step = lastStep();
      const total = totalSteps();
      const gpusAsked = j.spec && j.spec.resources ? j.spec.resources.gpus : null;
      replace(facts,
        fact('Node', j.node || '–', 'job-node'),
        fact('GPUs', ((j.gpus || []).join(', ') || '–') + (gpusAsked !== null && gpusAsked !== undefined ? ` (asked ${gpusAsked})` : ''), 'job-gpus'),
        fact('Step', step === null ? '–' : fmtExact(step) + (total ? ' / ' + fmtExact(total) : ''), 'job-step'),
        fact('Points', String(Math.max(j.points || 0, run.points.length))),
        fact('Created', fmtTime(j.created_at)),
        fact('Started', fmtTime(j.started_at)),
        fact(TERMINAL.has(j.state) ? 'Finished' : 'Elapsed', TERMINAL.has(j.state) ? fmtTime(j.finished_at) : fmtDur(jobDuration(j)), 'job-elapsed'),
        TERMINAL.has(j.state) ? fact('Duration', fmtDur(jobDuration(j))) : null,
        j.exit_code !== null && j.exit_code !== undefined ? fact('Exit code', String(j.exit_code)) : null,
        j.signal ? fact('Signal', j.signal) : null,
        j.bad_lines ? fact('Bad metric lines', String(j.bad_lines)) : null,
        j.attempt > 1 || j.requeuing ? fact('Attempt', String(j.attempt) + (j.requeuing && !TERMINAL.has(j.state) ? ' (stopping, to be requeued)' : ''), 'job-attempt') : null,
        j.cancel_requested && !j.requeuing && !TERMINAL.has(j.state) ? fact('Cancel', 'requested') : null,
        j.error ? fact('Error', j.error) : null,
        ...(j.conditions || []).map((c) => el('div', { class: 'fact wide', 'data-condition': c.kind },
          el('div', { class: 'k' }, 'Health: ' + c.kind), el('div', { class: 'v' }, 'since ' + fmtTime(c.since) + ' — ' + (c.evidence || '')))),
        j.state === 'queued' && j.reason ? el('div', { class: 'fact wide' }, el('div', { class: 'k' }, 'Waiting for'), queueReason(j, 'job-reason')) : null);
      renderRanks(j);
      renderAttempts(j);
      const frac = total && step !== null ? Math.max(0, Math.min(1, step / total)) : null;
      progress.hidden = frac === null;
      if (frac !== null) {
        progress.firstChild.style.width = (frac * 100).toFixed(1) + '%';
        progress.title = (frac * 100).toFixed(0) + '%';
      }
    }

    function renderRanks(j) {
      const ranks = j.ranks || [];
      ranksPanel.hidden = ranks.length === 0;
      if (!ranks.length) return;
      replace(ranksPanel.querySelector('#ranks-note'),
        `${ranks.length} nodes, rendezvous ${j.master_addr || '–'}:${j.master_port || '–'}. The charts are rank 0's, the job's own; ` +
        'another rank\'s metrics are its own series, summed up here by their latest values. ',
        el('a', { href: compareHref(ranks.map((r) => (r.rank ? `${j.id}/rank/${r.rank}` : j.id))), 'data-link': true, id: 'compare-ranks' },
          'Chart every rank'));
      replace(ranksBody, ranks.map((r) => el('tr', { 'data-rank': String(r.rank) },
        el('td', { class: 'num' }, String(r.rank)),
        el('td', { class: 'mono' }, r.node),
        el('td', {}, (r.gpus || []).join(', ') || '–'),
        el('td', {}, stateBadge(r.state)),
        el('td', { class: 'mono' }, r.signal || (r.exit_code !== null && r.exit_code !== undefined ? String(r.exit_code) : '–')),
        el('td', { class: 'num' }, String(r.points || 0)),
        el('td', { class: 'mono wrap' }, r.rank === 0 ? 'charts above' : rankLatest(r.latest_metrics)),
        el('td', { class: 'wrap' }, r.error || ''))));
    }

    function renderAttempts(j) {
      const as = j.attempts || [];
      attemptsPanel.hidden = as.length === 0;
      replace(attemptsBody, as.map((a) => el('tr', { 'data-attempt': String(a.attempt) },
        el('td', { class: 'num' }, String(a.attempt)),
        el('td', { class: 'mono' }, a.node || '–'),
        el('td', {}, (a.gpus || []).join(', ') || '–'),
        el('td', {}, fmtTime(a.started_at) + ' – ' + fmtTime(a.finished_at)),
        el('td', { class: 'mono' }, a.signal || (a.exit_code !== null && a.exit_code !== undefined ? 'exit ' + a.exit_code : '–')),
        el('td', { class: 'wrap' }, a.reason || ''),
        el('td', { class: 'mono wrap' }, rankLatest(a.final_metrics)))));
    }

    // rankLatest sums up a rank's latest values: step first, then up to
    // six keys in order.
    function rankLatest(m) {
      const keys = sortedKeys(m || {}).filter((k) => k !== 'step');
      if (!m || (keys.length === 0 && !('step' in m))) return '–';
      const parts = ('step' in m ? [`step ${fmtExact(m.step)}`] : []).concat(keys.slice(0, 6).map((k) => `${k} ${fmtExact(m[k])}`));
      return parts.join(' · ') + (keys.length > 6 ? ` (+${keys.length - 6})` : '');
    }

    function renderFinal() {
      const j = st.job;
      const fm = j.final_metrics || {};
      finalPanel.className = 'panel final ' + j.state;
      finalPanel.setAttribute('data-state', j.state);
      if ('step' in fm) finalPanel.setAttribute('data-step', fmtExact(fm.step));
      let verdict = `Job ${j.state}`;
      const d = jobDuration(j);
      if (d !== null) verdict += ' after ' + fmtDur(d);
      if (j.exit_code !== null && j.exit_code !== undefined) verdict += ` (exit code ${j.exit_code})`;
      else if (j.signal) verdict += ` (signal ${j.signal})`;
      const keys = sortedKeys(fm);
      replace(finalPanel,
        el('h2', {}, 'Final metrics'),
        el('p', {}, verdict),
        j.error ? el('p', { class: 'error' }, j.error) : null,
        keys.length === 0
          ? el('p', { class: 'error' }, 'No final metrics were stored for this job.')
          : el('table', { id: 'final-metrics' },
            el('thead', {}, el('tr', {}, el('th', {}, 'Metric'), el('th', { class: 'num' }, 'Value'))),
            el('tbody', {}, keys.map((k) => el('tr', { 'data-key': k }, el('td', {}, k), el('td', { class: 'num mono' }, fmtExact(fm[k])))))),
        j.state === 'failed' && j.log_tail ? [el('h2', {}, 'Last log lines'), el('pre', { class: 'log' }, j.log_tail)] : null);
      finalPanel.hidden = false;
    }

    function renderEvents() {
      const evs = [...st.events.values()].sort((a, b) => (a.seq || 0) - (b.seq || 0));
      eventsPanel.hidden = evs.length === 0;
      replace(eventsBody, evs.map((e) => el('tr', {},
        el('td', {}, e.ts ? fmtTime(new Date(e.ts * 1000).toISOString()) : '–'),
        el('td', { class: 'mono' }, e.kind),
        el('td', { class: 'num' }, e.count || '–'),
        el('td', { class: 'wrap' }, e.message))));
    }

    function scheduleDraw() {
      if (drawTimer || stopped) return;
      const wait = Math.max(0, DRAW_MS - (Date.now() - lastDraw));
      drawTimer = setTimeout(() => {
        drawTimer = null;
        lastDraw = Date.now();
        drawAll();
      }, wait);
    }

    function drawNow() {
      if (drawTimer) clearTimeout(drawTimer);
      drawTimer = null;
      lastDraw = Date.now();
      drawAll();
    }

    function drawAll() {
      const keys = run.keys().sort();
      metricsNote.hidden = keys.length > 0;
      if (keys.length === 0 && ended) metricsNote.textContent = 'This job wrote no metrics.';
      syncCharts(group, charts, chartGrid, keys);
      const name = st.job ? st.job.name || id : id;
      for (const k of keys) {
        const c = charts.get(k);
        c.setRuns([run.chartRun(k, group.settings.x, name, PALETTE[0])]);
        c.draw();
      }
      const idx = [...st.gpus.keys()].sort((a, b) => a - b);
      gpuPanel.hidden = idx.length === 0 && !st.gpuNote;
      gpuNote.hidden = !st.gpuNote;
      gpuNote.textContent = st.gpuNote;
      if (idx.length > 0) {
        gpuUtil.setRuns(idx.map((i, n) => ({ name: 'gpu' + i, color: PALETTE[n % PALETTE.length], xs: st.gpus.get(i).ts, ys: st.gpus.get(i).util })));
        gpuMem.setRuns(idx.map((i, n) => ({ name: 'gpu' + i, color: PALETTE[n % PALETTE.length], xs: st.gpus.get(i).ts, ys: st.gpus.get(i).mem })));
        gpuUtil.draw();
        gpuMem.draw();
        replace(gpuTable, idx.map((i) => gpuRow(st.gpus.get(i).last)));
      }
      renderHeader();
    }

    // ---- I/O ----

    async function cancel() {
      if (!confirm('Cancel job ' + id + '? Its process group gets SIGTERM.')) return;
      cancelBtn.disabled = true;
      try {
        await api('/v1/jobs/' + encodeURIComponent(id) + '/cancel', { method: 'POST' });
        showError(null);
      } catch (e) {
        showError(e);
      } finally {
        cancelBtn.disabled = false;
      }
    }

    function loadHistory(before) {
      run.loadHistory(before).catch(showError);
    }

    // loadGPUHistory fills the GPU charts with the node's stored samples
    // from the job's start (to its end, for an ended job), so a page
    // opened mid-run is not empty and one opened after the end still
    // shows what the GPUs did. Samples belong to the node, not the job:
    // the window and the job's GPU indexes pick this job's share. A node
    // keeps its last 3,600 samples (an hour at 1 Hz); older windows are gone.
    async function loadGPUHistory(j) {
      const start = parseTime(j.started_at);
      if (!j.node || start === null) return;
      const end = TERMINAL.has(j.state) ? parseTime(j.finished_at) : null;
      try {
        const { samples } = await api(`/v1/nodes/${encodeURIComponent(j.node)}/gpus?limit=${GPU_KEEP}`);
        const newer = st.gpuSeq;
        // A sample is taken once a second: one on either side of the
        // window still describes the run.
        const old = (samples || []).filter((s) => s.ts * 1000 >= start - 1000 && (end === null || s.ts * 1000 <= end + 1000) && (!newer || s.seq < newer));
        if (stopped) return;
        if (old.length === 0) {
          if (end !== null && st.gpus.size === 0) {
            st.gpuNote = 'The node no longer stores GPU samples from this run (it keeps its last 3,600, about an hour).';
            scheduleDraw();
          }
          return;
        }
        // Samples arrive oldest first; rebuild so that they precede the
        // live ones already folded in.
        const live = st.gpus;
        st.gpus = new Map();
        st.gpuSeq = 0;
        for (const s of old) addGPU(s);
        for (const [i, s] of live) {
          const t = st.gpus.get(i) || { ts: [], util: [], mem: [], last: null };
          t.ts.push(...s.ts);
          t.util.push(...s.util);
          t.mem.push(...s.mem);
          t.last = s.last || t.last;
          st.gpus.set(i, t);
        }
        st.gpuSeq = Math.max(st.gpuSeq, newer);
        scheduleDraw();
      } catch (e) {
        showError(e);
      }
    }

    async function loadEvents() {
      try {
        const { events } = await api(`/v1/jobs/${encodeURIComponent(id)}/events`);
        for (const e of events || []) st.events.set(e.seq, e);
        renderEvents();
      } catch (e) {
        if (!(e instanceof HTTPError && e.status === 404)) showError(e);
      }
    }

    function onFrame(f) {
      switch (f.type) {
        case 'snapshot': {
          const first = !gotSnapshot;
          gotSnapshot = true;
          setJob(f.job);
          const pts = f.points || [];
          const gap = run.points.length > 0 && pts.length > 0 && pts[0].seq > run.points[run.points.length - 1].seq + 1;
          run.mergePoints(pts); // first: loadHistory asks for buckets of the keys seen
          if (pts.length > 0 && (first || gap)) loadHistory(pts[0].seq);
          // A finished job's node sample is someone else's load by now.
          if (!TERMINAL.has(f.job.state)) addGPU(f.gpu);
          if (first) {
            loadGPUHistory(f.job);
            loadEvents();
          }
          break;
        }
        case 'metrics':
          run.mergePoints(f.points);
          break;
        case 'gpu':
          addGPU(f.gpu);
          break;
        case 'state':
          setJob(f.job);
          break;
        case 'event':
          addEvent(f.event);
          break;
        case 'final':
          ended = true;
          setJob(f.job);
          renderFinal();
          drawNow(); // the end is shown whole at once, not a throttle tick later
          break;
        case 'error':
          showError(new HTTPError(0, f.error || 'the server reported an error'));
          break;
      }
    }

    function connect() {
      retryTimer = null;
      if (stopped) return;
      setConn(retry ? 'reconnecting…' : 'connecting…', 'down');
      ws = new WebSocket(wsURL('/v1/jobs/' + encodeURIComponent(id) + '/live'));
      ws.onopen = () => {
        retry = 0;
        setConn('live', 'live');
        showError(null);
      };
      ws.onmessage = (m) => {
        let f;
        try {
          f = JSON.parse(m.data);
        } catch (e) {
          showError(new Error('bad frame from the server: ' + e.message));
          return;
        }
        onFrame(f);
      };
      ws.onclose = (ev) => {
        ws = null;
        if (stopped) return;
        if (ev.code === 4404) {
          setConn('');
          replace(app(), el('div', { class: 'panel empty' }, 'No job ', el('code', {}, id), ' on this controller. ', el('a', { href: '/', 'data-link': true }, 'All jobs')));
          stopped = true;
          return;
        }
        if (ended) {
          setConn('ended', '');
          return;
        }
        reconnect();
      };
    }

    // reconnect waits (1 s, doubling to 10 s), checks the job over HTTP,
    // which also asks for a token if that is what failed, and dials again.
    function reconnect() {
      retry++;
      setConn('reconnecting…', 'down');
      const wait = Math.min(10000, 1000 * 2 ** Math.min(4, retry - 1));
      retryTimer = setTimeout(async () => {
        retryTimer = null;
        try {
          setJob(await api('/v1/jobs/' + encodeURIComponent(id)));
          showError(null);
        } catch (e) {
          showError(e);
          if (e instanceof AuthError) return; // the token form reloads the page
          if (e instanceof HTTPError && e.status === 404) {
            connect(); // the live endpoint answers 4404 and the page says so
            return;
          }
          if (!stopped) reconnect();
          return;
        }
        connect();
      }, wait);
    }

    // A first fetch over HTTP asks for the token if needed, before the
    // WebSocket (whose 401 a browser cannot see) is opened.
    (async () => {
      try {
        setJob(await api('/v1/jobs/' + encodeURIComponent(id)));
      } catch (e) {
        if (e instanceof HTTPError && e.status === 404) {
          replace(app(), el('div', { class: 'panel empty' }, 'No job ', el('code', {}, id), ' on this controller. ', el('a', { href: '/', 'data-link': true }, 'All jobs')));
          return;
        }
        showError(e);
        if (e instanceof AuthError) return;
      }
      connect();
    })();

    const ticker = setInterval(() => {
      if (st.job && !TERMINAL.has(st.job.state)) renderHeader();
    }, 1000);
    // While the job waits, its reason changes with other jobs and nodes,
    // which no frame of this job reports: read it again over HTTP.
    let reasonBusy = false;
    const reasonTicker = setInterval(async () => {
      if (stopped || reasonBusy || !st.job || st.job.state !== 'queued') return;
      reasonBusy = true;
      try {
        const j = await api('/v1/jobs/' + encodeURIComponent(id));
        if (!stopped && st.job && st.job.state === 'queued') setJob(j);
      } catch (e) {
        if (!stopped) showError(e);
      } finally {
        reasonBusy = false;
      }
    }, POLL_MS);
    const onResize = () => {
      for (const c of group.charts) c.resize();
    };
    window.addEventListener('resize', onResize);

    return {
      stop() {
        stopped = true;
        logs.stop();
        group.destroy();
        clearInterval(ticker);
        clearInterval(reasonTicker);
        window.removeEventListener('resize', onResize);
        if (retryTimer) clearTimeout(retryTimer);
        if (drawTimer) clearTimeout(drawTimer);
        if (ws) ws.close(1000, 'page left');
      },
    };
  }

  // ----- runs compared -----

  // comparePage overlays the metrics of several jobs, one colour per run.
  // Each run's history is read like the job page's (downsampled buckets
  // for a long run), then new points are polled with ?after= while any
  // run is still going: one request per run every POLL_MS, instead of a
  // WebSocket per run.
  function comparePage(ids) {
    document.title = 'Compare · Gantry';
    let stopped = false;
    let drawTimer = null;
    const err = el('p', { class: 'error', hidden: true });
    const legend = el('div', { class: 'runs', id: 'compare-runs' });
    const grid = el('div', { class: 'charts', id: 'metric-charts' });
    const note = el('p', { class: 'muted' }, ids.length ? 'Loading runs…' : 'No jobs named. Tick jobs in the list, then Compare.');
    const group = new ChartGroup('compare');
    group.onChange = () => drawAll();
    const charts = new Map();
    const runs = ids.map((id) => new RunData(id, () => stopped, () => scheduleDraw()));
    const failed = new Map(); // id → error text
    replace(app(),
      el('div', { class: 'page-head' }, el('h1', {}, 'Compare runs'), el('span', { class: 'muted' }, ids.length + ' runs'),
        el('span', { class: 'spacer' }), el('a', { href: '/', 'data-link': true }, 'All jobs')),
      err,
      el('section', { class: 'panel' }, legend),
      el('section', { class: 'panel' }, el('h2', {}, 'Metrics'), group.controls(), note, grid));

    function showError(e) {
      err.hidden = !e;
      err.textContent = e ? errorText(e) : '';
    }

    function scheduleDraw() {
      if (!drawTimer && !stopped) drawTimer = setTimeout(drawAll, DRAW_MS);
    }

    function drawAll() {
      if (drawTimer) clearTimeout(drawTimer);
      drawTimer = null;
      if (stopped) return;
      replace(legend, runs.map((r, i) => {
        const j = r.job;
        const sw = el('i', { class: 'swatch' });
        sw.style.background = PALETTE[i % PALETTE.length]; // CSSOM: the CSP allows no inline style attributes
        return el('div', { class: 'run', 'data-job-id': r.id }, sw,
          el('a', { href: '/jobs/' + encodeURIComponent(r.jobId), 'data-link': true }, runName(r)), ' ',
          j ? stateBadge(j.state) : null, ' ',
          el('span', { class: 'muted mono' }, r.id),
          failed.has(r.id) ? el('span', { class: 'error' }, ' ' + failed.get(r.id)) : null);
      }));
      const keys = [...new Set(runs.flatMap((r) => r.keys()))].sort();
      note.hidden = keys.length > 0;
      if (keys.length === 0 && runs.every((r) => r.job && TERMINAL.has(r.job.state))) note.textContent = 'These jobs wrote no metrics.';
      syncCharts(group, charts, grid, keys);
      for (const k of keys) {
        const c = charts.get(k);
        // Every run keeps its colour on every chart, even where it lacks
        // the metric, so the colours match the list above.
        c.setRuns(runs.map((r, i) => (r.series.has(k) || r.hist.has(k) ? r.chartRun(k, group.settings.x, runName(r), PALETTE[i % PALETTE.length]) : null)).filter(Boolean));
        c.draw();
      }
    }

    // runName is a run's label: the job's name, and its rank for a rank's
    // own series.
    function runName(r) {
      const name = (r.job && r.job.name) || r.jobId;
      return r.rank ? `${name} · rank ${r.rank}` : name;
    }

    // seqOf is the last seq of the run's series: the job's, or its rank's.
    function seqOf(r) {
      if (!r.job) return 0;
      if (!r.rank) return r.job.last_seq || 0;
      return ((r.job.ranks || [])[r.rank] || {}).last_seq || 0;
    }

    // refresh reads a run's job (through jobOf) and the points it has
    // gained. The first time, that is its whole history.
    async function refresh(r, jobOf) {
      if (r.job && TERMINAL.has(r.job.state) && r.lastSeq() >= seqOf(r)) return;
      const j = await jobOf(r.jobId);
      r.job = j;
      const have = r.lastSeq();
      const last = seqOf(r);
      if (last > have) {
        if (have === 0) await r.loadHistory(last + 1);
        else await r.loadPoints(have, last + 1);
      }
      failed.delete(r.id);
    }

    const p = poller(async () => {
      // One read of each job per tick, shared by its runs (a job charted
      // rank by rank is one job).
      const jobs = new Map();
      const jobOf = (id) => {
        if (!jobs.has(id)) jobs.set(id, api('/v1/jobs/' + encodeURIComponent(id)));
        return jobs.get(id);
      };
      await Promise.all(runs.map((r) => refresh(r, jobOf).catch((e) => {
        if (e instanceof AuthError) throw e;
        failed.set(r.id, errorText(e));
      })));
      drawAll();
    }, POLL_MS, showError);
    const onResize = () => {
      for (const c of group.charts) c.resize();
    };
    window.addEventListener('resize', onResize);
    return {
      stop() {
        stopped = true;
        p.stop();
        group.destroy();
        if (drawTimer) clearTimeout(drawTimer);
        window.removeEventListener('resize', onResize);
      },
    };
  }

  // gpuHead is the header of a table of gpuRow rows, with extra cells
  // after gpuRow's (the nodes page adds the job holding each GPU).
  function gpuHead(...extra) {
    return el('thead', {}, el('tr', {},
      el('th', {}, 'GPU'), el('th', {}, 'Name'), el('th', {}, 'Utilization'), el('th', { class: 'num' }, 'Memory (GiB)'),
      el('th', { class: 'num' }, 'Temp'), el('th', { class: 'num' }, 'Power'), el('th', { class: 'num' }, 'SM clock'), el('th', {}, 'Throttled'),
      ...extra));
  }

  function gpuRow(g) {
    if (!g) return null;
    const util = Math.max(0, Math.min(100, g.utilization_pct || 0));
    const bar = el('span', { class: 'bar' }, el('span'));
    bar.firstChild.style.width = util.toFixed(0) + '%';
    return el('tr', { 'data-gpu': g.index },
      el('td', {}, 'gpu' + g.index),
      el('td', { title: g.uuid || '' }, g.name || '–'),
      el('td', {}, bar, util.toFixed(0) + '%'),
      el('td', { class: 'num' }, fmtBytesGiB(g.memory_used_bytes) + ' / ' + fmtBytesGiB(g.memory_total_bytes)),
      el('td', { class: 'num' }, (g.temperature_c || 0).toFixed(0) + ' °C'),
      el('td', { class: 'num' }, (g.power_w || 0).toFixed(0) + ' W'),
      el('td', { class: 'num' }, g.sm_clock_mhz ? g.sm_clock_mhz + ' MHz' : '–'),
      el('td', {}, throttleBadge(g)));
  }

  // throttleBadge shows the clocks event reasons that cost the GPU
  // throughput (the API's throttled_by: thermal or power slowdown, power
  // cap), every reason of the sample in its tooltip; a GPU idle or at
  // fixed clocks has only benign reasons and shows a dash.
  function throttleBadge(g) {
    const all = (g.throttle_reason_names || []).join(', ');
    const by = g.throttled_by || [];
    if (by.length === 0) return el('span', { class: 'muted', title: all }, '–');
    return el('span', { class: 'cond cond-throttled', title: 'clocks held down by: ' + all, 'data-throttled': by.join(',') },
      'throttled: ' + by.join(', '));
  }

  // ----- nodes -----

  function nodesPage() {
    document.title = 'Nodes · Gantry';
    const count = el('span', { class: 'muted' });
    const err = el('p', { class: 'error', hidden: true });
    const list = el('div', { id: 'nodes' });
    replace(app(), el('div', { class: 'page-head' }, el('h1', {}, 'Nodes'), count), err, list);
    return poller(async () => {
      const { nodes } = await api('/v1/nodes');
      nodes.sort((a, b) => (a.id < b.id ? -1 : 1));
      // One latest sample per node, fetched side by side.
      const samples = await Promise.all(nodes.map((n) =>
        api(`/v1/nodes/${encodeURIComponent(n.id)}/gpus?limit=1`).then((r) => (r.samples || [])[0] || null)));
      const gpus = nodes.reduce((a, n) => a + (n.gpus || []).length, 0);
      const free = nodes.reduce((a, n) => a + (n.free_gpus || 0), 0);
      count.textContent = `${nodes.length} nodes · ${free}/${gpus} GPUs free`;
      if (nodes.length === 0) {
        replace(list, el('div', { class: 'panel empty' }, 'No agents have joined yet.'));
        return;
      }
      replace(list, nodes.map((n, i) => nodeCard(n, samples[i])));
    }, POLL_MS, (e) => {
      err.hidden = !e;
      err.textContent = e ? errorText(e) : '';
    });
  }

  function nodeCard(n, sample) {
    const stats = new Map(((sample && sample.gpus) || []).map((g) => [g.index, g]));
    return el('section', { class: 'panel', 'data-node-id': n.id },
      el('div', { class: 'node-head' },
        el('h2', {}, n.id), stateBadge(n.state),
        el('span', { class: 'muted' }, [
          n.hostname && n.hostname !== n.id ? n.hostname : null,
          n.connected ? 'connected' : 'not connected to this controller',
          n.version ? 'agent ' + n.version : null,
          'last seen ' + fmtAge(n.last_seen),
          `${n.free_gpus}/${(n.gpus || []).length} GPUs free`,
        ].filter(Boolean).join(' · ')),
        n.drained ? el('span', { class: 'cond', 'data-drained': 'node' }, 'drained') : null),
      (n.gpus || []).length === 0 ? el('p', { class: 'muted' }, 'No GPUs.') :
        el('table', {},
          gpuHead(el('th', {}, 'Job')),
          el('tbody', {}, n.gpus.map((g) => {
            const s = stats.get(g.index);
            const row = gpuRow(s || { index: g.index, name: g.name, uuid: g.uuid, memory_total_bytes: g.memory_total_bytes, memory_used_bytes: 0 });
            if (!s) row.classList.add('muted');
            row.appendChild(el('td', {}, g.job_id ? jobLink(g.job_id) : el('span', { class: 'muted' }, 'free'),
              g.healthy === false ? el('span', { class: 'cond cond-hung', title: g.fault || '', 'data-gpu-health': 'failing' }, 'failing: ' + (g.fault || '')) : null,
              g.drained ? el('span', { class: 'cond', 'data-gpu-health': 'drained' }, 'drained') : null));
            return row;
          }))));
  }

  // ---------- start ----------

  // A script or style the CSP blocks fails quietly in the page; an error
  // in the console makes it visible (and fails the browser tests, which
  // count console errors).
  document.addEventListener('securitypolicyviolation', (e) => {
    console.error(`Content-Security-Policy blocked ${e.blockedURI || 'inline code'} (${e.violatedDirective})`);
  });

  document.addEventListener('click', (e) => {
    const a = e.target.closest('a[data-link]');
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(a.getAttribute('href'));
  });
  window.addEventListener('popstate', route);
  initToken();
  route();
})();
