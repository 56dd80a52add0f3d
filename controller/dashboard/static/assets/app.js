// Gantry dashboard: a single-page app over the controller's /v1 API.
// No build step and no libraries: DOM helpers, a small SVG line chart and
// three pages (jobs, one job live, nodes), routed on location.pathname.
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
  const DRAW_MAX = 1200; // drawn points per series; min/max-decimated beyond
  const GPU_KEEP = 900; // GPU samples kept per job page (15 min at 1 Hz)
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

  function svg(tag, attrs) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
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

  // ---------- line chart ----------

  // niceStep picks 1, 2 or 5 times a power of ten, about span/count.
  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  }

  // decimate keeps at most ~max points of (xs, ys): the min and the max of
  // each bucket, so spikes survive thinning.
  function decimate(xs, ys, max) {
    const n = xs.length;
    if (n <= max) return { xs, ys };
    const size = Math.ceil(n / Math.floor(max / 2));
    const ox = [];
    const oy = [];
    for (let i = 0; i < n; i += size) {
      const end = Math.min(n, i + size);
      let lo = i;
      let hi = i;
      for (let j = i + 1; j < end; j++) {
        if (ys[j] < ys[lo]) lo = j;
        if (ys[j] > ys[hi]) hi = j;
      }
      for (const j of lo <= hi ? [lo, hi] : [hi, lo]) {
        ox.push(xs[j]);
        oy.push(ys[j]);
        if (lo === hi) break;
      }
    }
    return { xs: ox, ys: oy };
  }

  // Chart is one titled SVG line chart with one or more series. draw() is
  // cheap enough to call on every update; callers throttle it anyway.
  class Chart {
    constructor(key, title, opts) {
      this.key = key;
      this.opts = Object.assign({ xFmt: fmtAxis, yFmt: fmtAxis, valueFmt: fmtNum, xName: 'step', height: 170 }, opts);
      // [{name, color, xs, ys, band}]; band, when set, is {xs, lo, hi}:
      // the min and max of each downsampled bucket at xs, drawn as a
      // vertical segment so that a spike inside a bucket stays visible.
      this.series = [];
      this.last = el('span', { class: 'chart-last' });
      this.legend = el('div', { class: 'legend' });
      this.svg = svg('svg', { role: 'img', 'aria-label': title });
      this.tip = el('div', { class: 'tip', hidden: true });
      this.el = el('div', { class: 'chart', 'data-key': key, 'data-points': 0 },
        el('div', { class: 'chart-head' }, el('span', { class: 'chart-title', title }, title), this.last),
        this.svg, this.legend, this.tip);
      this.svg.addEventListener('mousemove', (e) => this.hover(e));
      this.svg.addEventListener('mouseleave', () => this.hover(null));
      this.geom = null;
    }

    setSeries(series) {
      this.series = series;
    }

    points() {
      return this.series.reduce((n, s) => n + s.xs.length, 0);
    }

    draw() {
      const width = Math.max(200, Math.round(this.svg.getBoundingClientRect().width) || 360);
      const height = this.opts.height;
      const pad = { l: 50, r: 10, t: 8, b: 20 };
      const s = this.svg;
      s.replaceChildren();
      s.setAttribute('viewBox', `0 0 ${width} ${height}`);
      const n = this.points();
      this.el.setAttribute('data-points', n);
      this.el.setAttribute('data-buckets', this.series.reduce((m, ser) => m + (ser.band ? ser.band.xs.length : 0), 0));
      const drawn = this.series.filter((ser) => ser.xs.length > 0);
      if (drawn.length === 0) {
        const t = svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'axis' });
        t.textContent = 'no data yet';
        t.setAttribute('fill', '#5f6b7a');
        s.appendChild(t);
        this.last.textContent = '';
        this.geom = null;
        return;
      }
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (const ser of drawn) {
        for (let i = 0; i < ser.xs.length; i++) {
          const x = ser.xs[i], y = ser.ys[i];
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
        const b = ser.band;
        for (let i = 0; b && i < b.xs.length; i++) {
          if (b.lo[i] < y0) y0 = b.lo[i];
          if (b.hi[i] > y1) y1 = b.hi[i];
        }
      }
      this.el.setAttribute('data-ymin', y0);
      this.el.setAttribute('data-ymax', y1);
      if (this.opts.yMin !== undefined) y0 = Math.min(y0, this.opts.yMin);
      if (this.opts.yMax !== undefined) y1 = Math.max(y1, this.opts.yMax);
      if (x0 === x1) { x0 -= 1; x1 += 1; }
      if (y0 === y1) {
        const d = Math.abs(y0) * 0.1 || 1;
        y0 -= d;
        y1 += d;
      }
      const ystep = niceStep(y1 - y0, 4);
      y0 = Math.floor(y0 / ystep) * ystep;
      y1 = Math.ceil(y1 / ystep) * ystep;
      const pw = width - pad.l - pad.r;
      const ph = height - pad.t - pad.b;
      const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * pw;
      const sy = (y) => pad.t + (1 - (y - y0) / (y1 - y0)) * ph;
      this.geom = { sx, x0, x1, pad, pw, width, height };

      const axis = svg('g', { class: 'axis' });
      for (let y = y0; y <= y1 + ystep / 2; y += ystep) {
        const py = sy(y);
        axis.appendChild(svg('line', { x1: pad.l, x2: width - pad.r, y1: py, y2: py, class: 'gridline' }));
        const t = svg('text', { x: pad.l - 6, y: py + 3, 'text-anchor': 'end' });
        t.textContent = this.opts.yFmt(Math.abs(y) < ystep / 1e6 ? 0 : y);
        axis.appendChild(t);
      }
      const xstep = Math.max(this.opts.xMinStep || 0, niceStep(x1 - x0, Math.max(2, Math.floor(pw / 90))));
      let prev = '';
      for (let x = Math.ceil(x0 / xstep) * xstep; x <= x1; x += xstep) {
        const label = this.opts.xFmt(x);
        if (label === prev) continue; // a coarse format can repeat itself
        prev = label;
        const t = svg('text', { x: sx(x), y: height - 5, 'text-anchor': 'middle' });
        t.textContent = label;
        axis.appendChild(t);
      }
      s.appendChild(axis);

      for (const ser of drawn) {
        const b = ser.band;
        if (!b || b.xs.length === 0) continue;
        let path = '';
        for (let i = 0; i < b.xs.length; i++) {
          if (b.hi[i] === b.lo[i]) continue; // the line shows it
          const x = sx(b.xs[i]).toFixed(1);
          path += 'M' + x + ' ' + sy(b.lo[i]).toFixed(1) + 'V' + sy(b.hi[i]).toFixed(1);
        }
        if (path) s.appendChild(svg('path', { d: path, class: 'band', stroke: ser.color }));
      }
      for (const ser of drawn) {
        const d = decimate(ser.xs, ser.ys, DRAW_MAX);
        let path = '';
        for (let i = 0; i < d.xs.length; i++) {
          path += (i === 0 ? 'M' : 'L') + sx(d.xs[i]).toFixed(1) + ' ' + sy(d.ys[i]).toFixed(1);
        }
        if (d.xs.length === 1) {
          s.appendChild(svg('circle', { cx: sx(d.xs[0]), cy: sy(d.ys[0]), r: 2.5, fill: ser.color }));
        } else {
          s.appendChild(svg('path', { d: path, class: 'series', stroke: ser.color }));
        }
      }
      this.cursor = svg('line', { class: 'cursor', y1: pad.t, y2: height - pad.b, visibility: 'hidden' });
      s.appendChild(this.cursor);

      if (drawn.length === 1) {
        const ser = drawn[0];
        this.last.textContent = this.opts.valueFmt(ser.ys[ser.ys.length - 1]);
        this.legend.hidden = true;
      } else {
        this.last.textContent = '';
        this.legend.hidden = false;
        replace(this.legend, drawn.map((ser) => el('span', {},
          el('i', { style: null, 'data-color': ser.color }), ser.name + ' ' + this.opts.valueFmt(ser.ys[ser.ys.length - 1]))));
        // Colours go through the DOM API: the CSP allows no inline styles.
        this.legend.querySelectorAll('i').forEach((i) => { i.style.background = i.getAttribute('data-color'); });
      }
    }

    // hover shows the values nearest the pointer's x.
    hover(e) {
      if (!e || !this.geom) {
        this.tip.hidden = true;
        if (this.cursor) this.cursor.setAttribute('visibility', 'hidden');
        return;
      }
      const g = this.geom;
      const r = this.svg.getBoundingClientRect();
      const px = ((e.clientX - r.left) / r.width) * g.width;
      if (px < g.pad.l || px > g.pad.l + g.pw) return this.hover(null);
      const x = g.x0 + ((px - g.pad.l) / g.pw) * (g.x1 - g.x0);
      const lines = [];
      let at = null;
      for (const ser of this.series) {
        const i = nearest(ser.xs, x);
        if (i < 0) continue;
        if (at === null) at = ser.xs[i];
        let v = this.opts.valueFmt(ser.ys[i]);
        const b = ser.band;
        if (b && i < b.xs.length && b.lo[i] !== b.hi[i]) v += ` (${this.opts.valueFmt(b.lo[i])} – ${this.opts.valueFmt(b.hi[i])})`;
        lines.push((this.series.length > 1 ? ser.name + ' ' : '') + v);
      }
      if (at === null) return this.hover(null);
      this.tip.textContent = this.opts.xName + ' ' + this.opts.xFmt(at) + ' · ' + lines.join(' · ');
      this.tip.hidden = false;
      const cx = g.sx(at);
      this.cursor.setAttribute('x1', cx);
      this.cursor.setAttribute('x2', cx);
      this.cursor.setAttribute('visibility', 'visible');
      const box = this.el.getBoundingClientRect();
      const left = r.left - box.left + (cx / g.width) * r.width;
      this.tip.style.left = Math.max(4, Math.min(left + 8, box.width - this.tip.offsetWidth - 4)) + 'px';
      this.tip.style.top = r.top - box.top + 4 + 'px';
    }
  }

  // nearest finds the index of the value in sorted xs closest to x.
  function nearest(xs, x) {
    if (xs.length === 0) return -1;
    let lo = 0, hi = xs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && Math.abs(xs[lo - 1] - x) <= Math.abs(xs[lo] - x)) return lo - 1;
    return lo;
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

  // ----- jobs list -----

  function jobsPage() {
    document.title = 'Jobs · Gantry';
    const count = el('span', { class: 'muted' });
    const err = el('p', { class: 'error', hidden: true });
    const tbody = el('tbody');
    replace(app(),
      el('div', { class: 'page-head' }, el('h1', {}, 'Jobs'), count),
      err,
      el('div', { class: 'panel' }, el('table', { id: 'jobs' },
        el('thead', {}, el('tr', {},
          el('th', {}, 'ID'), el('th', {}, 'Name'), el('th', {}, 'State'), el('th', {}, 'Node'),
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
        replace(tbody, el('tr', {}, el('td', { colspan: 9, class: 'empty' }, 'No jobs yet. Submit one with ', el('code', {}, 'gantry run job.yaml'), '.')));
        return;
      }
      replace(tbody, jobs.map((j) => el('tr', { 'data-job-id': j.id },
        el('td', {}, jobLink(j.id)),
        el('td', {}, j.name || '–'),
        el('td', {}, stateBadge(j.state), queueReason(j)),
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
    let historyLoading = false;
    let gotSnapshot = false; // a reconnect's snapshot loads no history again

    const st = {
      job: null,
      points: [], // by seq, no duplicates
      series: new Map(), // metric key → {seqs, xs, ys} of the points above
      // Downsampled history of a long run: metric key → {cut, xs, lo, hi,
      // last}, buckets for seqs up to cut (the points array holds later
      // ones). Empty for a short run, whose points are all fetched.
      hist: new Map(),
      histCut: 0, // every metric's buckets cover the seqs up to here
      gpus: new Map(), // GPU index → {ts: [], util: [], mem: [], last: stat}
      gpuSeq: 0,
      events: new Map(), // seq → event
    };
    const charts = new Map(); // key → Chart
    const gpuUtil = new Chart('gpu:utilization', 'GPU utilization %', { xFmt: (x) => fmtClock(x * 1000), xName: 'time', xMinStep: 1, yMin: 0, yMax: 100, valueFmt: (v) => v.toFixed(0) + '%' });
    const gpuMem = new Chart('gpu:memory', 'GPU memory used (GiB)', { xFmt: (x) => fmtClock(x * 1000), xName: 'time', xMinStep: 1, yMin: 0, valueFmt: (v) => v.toFixed(1) + ' GiB' });

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
    const gpuPanel = el('section', { class: 'panel', id: 'gpu-panel', hidden: true },
      el('h2', {}, 'GPUs'),
      el('div', { class: 'charts' }, gpuUtil.el, gpuMem.el),
      el('table', { class: 'gpu-now' }, el('thead', {}, el('tr', {},
        el('th', {}, 'GPU'), el('th', {}, 'Name'), el('th', {}, 'Utilization'), el('th', { class: 'num' }, 'Memory (GiB)'),
        el('th', { class: 'num' }, 'Temp'), el('th', { class: 'num' }, 'Power'), el('th', { class: 'num' }, 'SM clock'))), gpuTable));
    const eventsBody = el('tbody');
    const eventsPanel = el('section', { class: 'panel', id: 'events-panel', hidden: true },
      el('h2', {}, 'Events'),
      el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'Time'), el('th', {}, 'Kind'), el('th', { class: 'num' }, 'Count'), el('th', {}, 'Message'))), eventsBody));

    replace(app(),
      el('div', { class: 'page-head' }, title, stateHolder, el('span', { class: 'spacer' }), cancelBtn),
      err,
      el('section', { class: 'panel', id: 'job-header' }, facts, progress),
      finalPanel,
      el('section', { class: 'panel' }, el('h2', {}, 'Metrics'), metricsNote, chartGrid),
      gpuPanel,
      eventsPanel);

    function showError(e) {
      err.hidden = !e;
      err.textContent = e ? errorText(e) : '';
    }

    // ---- state folding ----

    function xOf(pt) {
      return pt.step === null || pt.step === undefined ? pt.seq : pt.step;
    }

    function addToSeries(pt) {
      for (const [k, v] of Object.entries(pt.values || {})) {
        let s = st.series.get(k);
        if (!s) st.series.set(k, (s = { seqs: [], xs: [], ys: [] }));
        s.seqs.push(pt.seq);
        s.xs.push(xOf(pt));
        s.ys.push(v);
      }
    }

    // mergePoints folds points in by seq. New points past the last seq
    // (the live stream) append; anything older (history, a reconnect's
    // snapshot) merges and rebuilds the series.
    function mergePoints(pts) {
      if (!pts || pts.length === 0) return;
      const last = st.points.length ? st.points[st.points.length - 1].seq : 0;
      if (pts.every((p, i) => p.seq > (i === 0 ? last : pts[i - 1].seq))) {
        for (const p of pts) {
          st.points.push(p);
          addToSeries(p);
        }
      } else {
        const bySeq = new Map(st.points.map((p) => [p.seq, p]));
        for (const p of pts) bySeq.set(p.seq, p);
        st.points = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
        st.series = new Map();
        for (const p of st.points) addToSeries(p);
      }
      scheduleDraw();
    }

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
      renderHeader();
    }

    // ---- rendering ----

    function fact(k, v, id) {
      return el('div', { class: 'fact' }, el('div', { class: 'k' }, k), el('div', { class: 'v', id }, v));
    }

    function lastStep() {
      for (let i = st.points.length - 1; i >= 0; i--) {
        const s = st.points[i].step;
        if (s !== null && s !== undefined) return s;
      }
      return st.job ? jobStep(st.job) : null;
    }

    function totalSteps() {
      const s = st.series.get('total_steps');
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
        fact('Points', String(Math.max(j.points || 0, st.points.length))),
        fact('Created', fmtTime(j.created_at)),
        fact('Started', fmtTime(j.started_at)),
        fact(TERMINAL.has(j.state) ? 'Finished' : 'Elapsed', TERMINAL.has(j.state) ? fmtTime(j.finished_at) : fmtDur(jobDuration(j)), 'job-elapsed'),
        TERMINAL.has(j.state) ? fact('Duration', fmtDur(jobDuration(j))) : null,
        j.exit_code !== null && j.exit_code !== undefined ? fact('Exit code', String(j.exit_code)) : null,
        j.signal ? fact('Signal', j.signal) : null,
        j.bad_lines ? fact('Bad metric lines', String(j.bad_lines)) : null,
        j.cancel_requested && !TERMINAL.has(j.state) ? fact('Cancel', 'requested') : null,
        j.error ? fact('Error', j.error) : null,
        j.state === 'queued' && j.reason ? el('div', { class: 'fact wide' }, el('div', { class: 'k' }, 'Waiting for'), queueReason(j, 'job-reason')) : null);
      const frac = total && step !== null ? Math.max(0, Math.min(1, step / total)) : null;
      progress.hidden = frac === null;
      if (frac !== null) {
        progress.firstChild.style.width = (frac * 100).toFixed(1) + '%';
        progress.title = (frac * 100).toFixed(0) + '%';
      }
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

    // seriesOf is one metric's chart series: its downsampled buckets, if
    // any, then the points after them. The line runs through each bucket's
    // last value; the band holds its min and max.
    function seriesOf(k) {
      const raw = st.series.get(k) || { seqs: [], xs: [], ys: [] };
      const h = st.hist.get(k);
      if (!h) return { name: k, color: PALETTE[0], xs: raw.xs, ys: raw.ys };
      let i = 0;
      while (i < raw.seqs.length && raw.seqs[i] <= h.cut) i++;
      return {
        name: k, color: PALETTE[0],
        xs: h.xs.concat(raw.xs.slice(i)), ys: h.last.concat(raw.ys.slice(i)),
        band: { xs: h.xs, lo: h.lo, hi: h.hi },
      };
    }

    function drawAll() {
      const keys = [...new Set([...st.series.keys(), ...st.hist.keys()])].filter((k) => k !== 'total_steps').sort();
      metricsNote.hidden = keys.length > 0;
      if (keys.length === 0 && ended) metricsNote.textContent = 'This job wrote no metrics.';
      let added = false;
      for (const k of keys) {
        if (!charts.has(k)) {
          charts.set(k, new Chart(k, k, {}));
          added = true;
        }
      }
      if (added) replace(chartGrid, keys.map((k) => charts.get(k).el));
      for (const k of keys) {
        const c = charts.get(k);
        c.setSeries([seriesOf(k)]);
        c.draw();
      }
      const idx = [...st.gpus.keys()].sort((a, b) => a - b);
      gpuPanel.hidden = idx.length === 0;
      if (idx.length > 0) {
        gpuUtil.setSeries(idx.map((i, n) => ({ name: 'gpu' + i, color: PALETTE[n % PALETTE.length], xs: st.gpus.get(i).ts, ys: st.gpus.get(i).util })));
        gpuMem.setSeries(idx.map((i, n) => ({ name: 'gpu' + i, color: PALETTE[n % PALETTE.length], xs: st.gpus.get(i).ts, ys: st.gpus.get(i).mem })));
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

    // loadHistory fills in the points older than before, the snapshot's
    // first seq (the snapshot holds only the newest 500). A few are
    // fetched as they are; for a long run, the older part comes as
    // downsampled buckets and only the points after the last whole bucket
    // are fetched.
    async function loadHistory(before) {
      if (historyLoading || before <= 1) return;
      historyLoading = true;
      try {
        // Seqs up to from are already here: as points, or in buckets.
        let from = 0;
        for (let i = st.points.length - 1; i >= 0; i--) {
          if (st.points[i].seq < before) {
            from = st.points[i].seq;
            break;
          }
        }
        from = Math.max(from, Math.min(st.histCut, before - 1));
        if (before - 1 - from > DOWNSAMPLE_ABOVE) {
          const cut = await loadBuckets(before);
          // Without buckets (an older controller), only the newest points.
          from = cut === null ? before - 1 - DOWNSAMPLE_ABOVE : cut;
        }
        await loadPoints(from, before);
      } catch (e) {
        showError(e);
      } finally {
        historyLoading = false;
      }
    }

    // loadPoints fetches the points with seqs in (after, before).
    async function loadPoints(after, before) {
      const got = [];
      while (!stopped && after < before - 1) {
        const limit = Math.min(HISTORY_PAGE, before - 1 - after);
        const page = await api(`/v1/jobs/${encodeURIComponent(id)}/metrics?after=${after}&limit=${limit}`);
        const pts = (page.points || []).filter((p) => p.seq < before);
        if (pts.length === 0) break;
        got.push(...pts);
        after = page.next;
      }
      if (stopped) return;
      mergePoints(got);
      scheduleDraw();
    }

    // loadBuckets replaces st.hist with the run's downsampled buckets that
    // end before seq before, and returns the last seq they cover (the
    // smallest such over the requests), or null when the controller has
    // no downsampling or the job no metric keys yet.
    async function loadBuckets(before) {
      const keys = [...new Set([...st.series.keys(), ...Object.keys((st.job && st.job.latest_metrics) || {})])]
        // "step" in latest_metrics is the last step, not a metric; and the
        // API splits keys=a,b on commas, so such a key cannot be named.
        .filter((k) => k !== 'step' && !k.includes(','));
      if (keys.length === 0) return null;
      const hist = new Map();
      let cut = Infinity;
      for (let i = 0; i < keys.length; i += DOWNSAMPLE_KEYS) {
        const names = keys.slice(i, i + DOWNSAMPLE_KEYS).map(encodeURIComponent).join(',');
        const r = await api(`/v1/jobs/${encodeURIComponent(id)}/metrics?max_points=${DOWNSAMPLE_POINTS}&keys=${names}`);
        if (stopped) return null;
        if (!r || !r.series || !r.bucket_seqs) return null;
        // Buckets are fixed seq ranges (i·w, (i+1)·w]: those wholly before
        // the snapshot are kept, and points follow the last of them. Each
        // request has its own w if the run grew in between.
        const w = r.bucket_seqs;
        const reqCut = Math.floor((before - 1) / w) * w;
        cut = Math.min(cut, reqCut);
        for (const [k, bs] of Object.entries(r.series)) {
          if (bs.length === 0) continue;
          const h = { cut: reqCut, xs: [], lo: [], hi: [], last: [] };
          for (const b of bs) {
            if (b.last_seq > reqCut) break;
            h.xs.push(b.step === null || b.step === undefined ? b.last_seq : b.step);
            h.lo.push(b.min);
            h.hi.push(b.max);
            h.last.push(b.last);
          }
          hist.set(k, h);
        }
      }
      st.hist = hist;
      st.histCut = cut;
      return cut;
    }

    // loadGPUHistory fills the GPU charts with the node's recent samples
    // since the job started, so a page opened mid-run is not empty.
    async function loadGPUHistory(j) {
      const start = parseTime(j.started_at);
      if (!j.node || start === null || TERMINAL.has(j.state)) return;
      try {
        const { samples } = await api(`/v1/nodes/${encodeURIComponent(j.node)}/gpus?limit=${GPU_KEEP}`);
        const newer = st.gpuSeq;
        const old = (samples || []).filter((s) => s.ts * 1000 >= start && (!newer || s.seq < newer));
        if (old.length === 0 || stopped) return;
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
          const gap = st.points.length > 0 && pts.length > 0 && pts[0].seq > st.points[st.points.length - 1].seq + 1;
          mergePoints(pts); // first: loadHistory asks for buckets of the keys seen
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
          mergePoints(f.points);
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
    const onResize = () => scheduleDraw();
    window.addEventListener('resize', onResize);

    return {
      stop() {
        stopped = true;
        clearInterval(ticker);
        clearInterval(reasonTicker);
        window.removeEventListener('resize', onResize);
        if (retryTimer) clearTimeout(retryTimer);
        if (drawTimer) clearTimeout(drawTimer);
        if (ws) ws.close(1000, 'page left');
      },
    };
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
      el('td', { class: 'num' }, g.sm_clock_mhz ? g.sm_clock_mhz + ' MHz' : '–'));
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
        ].filter(Boolean).join(' · '))),
      (n.gpus || []).length === 0 ? el('p', { class: 'muted' }, 'No GPUs.') :
        el('table', {},
          el('thead', {}, el('tr', {},
            el('th', {}, 'GPU'), el('th', {}, 'Name'), el('th', {}, 'Utilization'), el('th', { class: 'num' }, 'Memory (GiB)'),
            el('th', { class: 'num' }, 'Temp'), el('th', { class: 'num' }, 'Power'), el('th', { class: 'num' }, 'SM clock'), el('th', {}, 'Job'))),
          el('tbody', {}, n.gpus.map((g) => {
            const s = stats.get(g.index);
            const row = gpuRow(s || { index: g.index, name: g.name, uuid: g.uuid, memory_total_bytes: g.memory_total_bytes, memory_used_bytes: 0 });
            if (!s) row.classList.add('muted');
            row.appendChild(el('td', {}, g.job_id ? jobLink(g.job_id) : el('span', { class: 'muted' }, 'free')));
            return row;
          }))));
  }

  // ---------- start ----------

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
