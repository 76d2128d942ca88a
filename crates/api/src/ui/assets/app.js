// deskpool's web page: a plain client of /api/v1. No framework, no build step: the file is
// embedded in the binary as written. Every value from the API is put in the page with
// textContent, never parsed as HTML, so a pool or desktop name cannot inject markup.
'use strict';

(() => {
  const TOKEN_KEY = 'deskpool.token';
  // Polling rather than server-sent events: EventSource cannot send an Authorization header,
  // so SSE would need the token in a URL or a cookie. See the README's "Web page" section.
  const POLL_MS = 2000;
  const DESKTOP_PAGE = 25;
  const EVENT_PAGE = 50;

  const $ = (id) => document.getElementById(id);
  let me = null; // GET /api/v1/whoami
  let current = null; // the view on screen: { refresh(), stop() }
  let timer = null;

  // ---- DOM helpers --------------------------------------------------------------------

  /** h('td', {class: 'x', text: 'y', onclick: f}, child...) */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  /**
   * Replaces `holder`'s content with `el`, keeping keyboard focus on the same control (found
   * again by its aria-label) so polling never throws a keyboard user out of a table.
   */
  function redraw(holder, el) {
    const focused = holder.contains(document.activeElement) ? document.activeElement.getAttribute('aria-label') : null;
    holder.replaceChildren(el);
    if (focused === null) return;
    const again = [...holder.querySelectorAll('[aria-label]')].find((x) => x.getAttribute('aria-label') === focused);
    if (again && !again.disabled) again.focus();
    else holder.closest('section').querySelector('h1').focus();
  }

  function say(text) {
    $('live').textContent = text;
  }

  function fmtTime(iso) {
    if (!iso) return '-';
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
  }

  function age(iso) {
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 90) return `${s} s`;
    if (s < 90 * 60) return `${Math.round(s / 60)} min`;
    if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  /** A state badge: colour for a glance, the word itself for everyone. */
  function badge(state, extra) {
    return h('span', { class: `badge state-${state}` }, state, extra ? ` · ${extra}` : null);
  }

  // ---- API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  async function api(method, path, body, token) {
    const headers = { Authorization: `Bearer ${token || sessionStorage.getItem(TOKEN_KEY) || ''}` };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'network', `cannot reach deskpool (${e.message}); retrying`);
    }
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      data = null;
    }
    if (!res.ok) {
      const e = data && data.error;
      const err = new ApiError(res.status, e ? e.code : 'http',
        e ? e.message : `HTTP ${res.status} from ${path}`, e ? e.field : null);
      // A token revoked while the page is open: back to the sign-in form, saying why.
      if (res.status === 401 && !token) signOut(`Signed out: ${err.message}`);
      throw err;
    }
    return data;
  }

  /** Runs an action, showing the API's message in `errorEl` (next to its control). */
  async function act(errorEl, fn) {
    errorEl.textContent = '';
    try {
      await fn();
      return true;
    } catch (e) {
      errorEl.textContent = e.message;
      return false;
    }
  }

  // ---- confirmation dialog --------------------------------------------------------------

  function confirmAction(text, okLabel) {
    const dlg = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel;
    return new Promise((resolve) => {
      const done = (answer) => {
        $('confirm-ok').removeEventListener('click', ok);
        $('confirm-cancel').removeEventListener('click', cancel);
        dlg.removeEventListener('cancel', cancel);
        if (dlg.open) dlg.close();
        resolve(answer);
      };
      const ok = () => done(true);
      const cancel = (ev) => { if (ev) ev.preventDefault(); done(false); };
      $('confirm-ok').addEventListener('click', ok);
      $('confirm-cancel').addEventListener('click', cancel);
      dlg.addEventListener('cancel', cancel); // Escape
      dlg.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---- sign-in --------------------------------------------------------------------------

  function showSignIn(message) {
    stopView();
    $('view').hidden = true;
    $('nav').hidden = true;
    $('signout').hidden = true;
    $('who').textContent = '';
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    $('token').value = '';
    $('token').focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    showSignIn(message);
  }

  async function signIn(ev) {
    ev.preventDefault();
    const token = $('token').value.trim();
    if (!token) {
      $('signin-error').textContent = 'Enter an API token.';
      return;
    }
    try {
      me = await api('GET', '/api/v1/whoami', undefined, token);
    } catch (e) {
      $('signin-error').textContent = `Sign-in failed: ${e.message}`;
      $('token').select();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    signedIn();
  }

  function signedIn() {
    $('signin').hidden = true;
    $('nav').hidden = false;
    $('nav-tokens').hidden = !me.may.manage_tokens;
    $('signout').hidden = false;
    $('who').textContent = `${me.name} (${me.role})`;
    route();
  }

  // ---- routing and polling ---------------------------------------------------------------

  function stopView() {
    if (timer) clearInterval(timer);
    timer = null;
    current = null;
  }

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, query] = raw.split('?');
    return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || '') };
  }

  function route() {
    if (!me) return;
    stopView();
    const { parts, query } = parseHash();
    let v;
    if (parts[0] === 'pools' && parts[1]) v = poolView(parts[1]);
    else if (parts[0] === 'events') v = eventsView(query.get('pool') || '');
    else if (parts[0] === 'tokens' && me.may.manage_tokens) v = tokensView();
    else v = overviewView();
    const main = $('view');
    main.replaceChildren(v.el);
    main.hidden = false;
    for (const a of document.querySelectorAll('#nav a')) {
      a.toggleAttribute('aria-current', a.getAttribute('href') === `#/${parts[0] || ''}`);
    }
    current = v;
    const title = v.el.querySelector('h1');
    if (title) { title.tabIndex = -1; title.focus(); }
    tick();
    timer = setInterval(tick, POLL_MS);
  }

  /** Refreshes the view on screen; a slow answer is not overtaken by the next poll. */
  async function tick() {
    const v = current;
    if (!v || v.busy) return;
    v.busy = true;
    try {
      await v.refresh();
      if (v === current) v.problem.textContent = '';
    } catch (e) {
      if (v === current && e.status !== 401) v.problem.textContent = e.message;
    } finally {
      v.busy = false;
    }
  }

  /** The skeleton every view shares: a title, a line for load problems, and its body. */
  function frame(title) {
    const problem = h('p', { class: 'error', role: 'alert' });
    const updated = h('p', { class: 'hint' });
    const el = h('div', {}, h('h1', { text: title }), problem, updated);
    return { el, problem, updated, stamp: () => { updated.textContent = `Updated ${new Date().toLocaleTimeString()}, every ${POLL_MS / 1000} s.`; } };
  }

  function table(caption, headings) {
    const tbody = h('tbody');
    const t = h('table', {},
      h('caption', { class: 'sr-only', text: caption }),
      h('thead', {}, h('tr', {}, headings.map((x) => h('th', { scope: 'col', text: x })))),
      tbody);
    return { el: h('div', { class: 'table-wrap' }, t), tbody, headings };
  }

  /** A row whose cells carry their column name, shown as a label on narrow screens. */
  function row(headings, cells, attrs) {
    return h('tr', attrs || {}, cells.map((c, i) => h('td', { 'data-label': headings[i] }, c)));
  }

  // ---- pools overview -------------------------------------------------------------------

  function overviewView() {
    const f = frame('Pools');
    const t = table('Pools and their desktops', ['Pool', 'State', 'Target', 'Ready', 'Provisioning', 'Failed', 'Bounds', 'Last error']);
    const empty = h('p', { class: 'hint', hidden: true, text: 'No pools are defined yet (an admin defines them with POST /api/v1/pools).' });
    f.el.append(t.el, empty);
    return {
      el: f.el,
      problem: f.problem,
      async refresh() {
        const { pools } = await api('GET', '/api/v1/pools');
        t.tbody.replaceChildren(...pools.map((p) => row(t.headings, [
          h('a', { href: `#/pools/${encodeURIComponent(p.name)}`, text: p.name }),
          badge(p.status.state, p.status.paused ? 'paused' : null),
          p.status.target, p.status.ready, p.status.provisioning, p.status.failed,
          `${p.spec.min_size}–${p.spec.max_size}`,
          p.status.last_error || '-',
        ], { 'data-pool': p.name })));
        empty.hidden = pools.length > 0;
        f.stamp();
      },
    };
  }

  // ---- one pool ---------------------------------------------------------------------------

  function eventList(events, withPool) {
    const t = table('Events, newest first', withPool
      ? ['Time', 'Pool', 'Desktop', 'Actor', 'Kind', 'Message']
      : ['Time', 'Desktop', 'Actor', 'Kind', 'Message']);
    t.tbody.replaceChildren(...events.map((e) => row(t.headings, [
      h('time', { datetime: e.at, text: fmtTime(e.at) }),
      ...(withPool ? [e.pool || '-'] : []),
      e.desktop || '-', e.actor, e.kind, e.message,
    ])));
    return t;
  }

  function poolView(name) {
    const f = frame(`Pool ${name}`);
    const path = `/api/v1/pools/${encodeURIComponent(name)}`;
    const status = h('dl', { class: 'status' });
    let pool = null;
    f.el.append(h('p', {}, h('a', { href: '#/', text: '← All pools' })), status);

    // Resize: only for tokens that may; the bounds are shown and enforced by the input too.
    const controls = h('div', { class: 'controls' });
    let sizeInput = null;
    let boundsText = null;
    if (me.may.resize_pools) {
      sizeInput = h('input', { id: 'target-size', type: 'number', inputmode: 'numeric', required: true, 'aria-describedby': 'target-bounds resize-error' });
      boundsText = h('span', { id: 'target-bounds', class: 'hint' });
      const err = h('p', { id: 'resize-error', class: 'error', role: 'alert' });
      const form = h('form', { id: 'resize-form', method: 'post', novalidate: true },
        h('label', { for: 'target-size', text: 'Target size' }), sizeInput, boundsText,
        h('button', { type: 'submit', text: 'Resize' }), err);
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const n = Number(sizeInput.value);
        if (!Number.isInteger(n) || n < 0) {
          err.textContent = 'Enter a whole number.';
          return;
        }
        const ok = await act(err, async () => {
          pool = await api('PATCH', path, { target_size: n });
        });
        if (ok) {
          say(`Pool ${name}: target size set to ${n}`);
          sizeInput.dataset.dirty = '';
          render();
        }
      });
      sizeInput.addEventListener('input', () => { sizeInput.dataset.dirty = '1'; });
      controls.append(form);
    }
    let pauseButton = null;
    if (me.may.manage_pools) {
      const err = h('p', { id: 'pause-error', class: 'error', role: 'alert' });
      pauseButton = h('button', { id: 'pause', type: 'button', text: 'Pause' });
      pauseButton.addEventListener('click', async () => {
        const verb = pool && pool.status.paused ? 'resume' : 'pause';
        if (await act(err, async () => { pool = await api('POST', `${path}/${verb}`); })) {
          say(`Pool ${name} ${verb === 'pause' ? 'paused' : 'resumed'}`);
          render();
        }
      });
      controls.append(h('div', { class: 'inline' }, pauseButton, err));
    }
    if (controls.childElementCount) f.el.append(h('h2', { text: 'Change' }), controls);

    // Desktops, a page at a time by name; `after` cursors of the pages before this one.
    const cols = ['Name', 'State', 'Power', 'IP', 'Snapshot', 'Claimed by', 'Age'];
    if (me.may.replace_desktops) cols.push('Replace');
    const desktopsHolder = h('div');
    const cursors = [];
    let after = null;
    let next = null;
    const prev = h('button', { type: 'button', text: 'Previous page', disabled: true });
    const nextB = h('button', { type: 'button', text: 'Next page', disabled: true });
    prev.addEventListener('click', () => { after = cursors.pop() ?? null; tick(); });
    nextB.addEventListener('click', () => { cursors.push(after); after = next; tick(); });
    f.el.append(h('h2', { text: 'Desktops' }), desktopsHolder, h('div', { class: 'pager' }, prev, nextB));

    const eventsHolder = h('div');
    f.el.append(h('h2', { text: 'Recent events' }), eventsHolder,
      h('p', {}, h('a', { href: `#/events?pool=${encodeURIComponent(name)}`, text: `All events of pool ${name}` })));

    function render() {
      if (!pool) return;
      const s = pool.status;
      const items = [
        ['State', badge(s.state, s.paused ? 'paused' : null)],
        ['Target', s.target], ['Ready', s.ready], ['Provisioning', s.provisioning],
        ['Failed', s.failed], ['Deleting', s.deleting],
        ['Bounds', `${pool.spec.min_size}–${pool.spec.max_size}`],
        ['Snapshot', `${pool.spec.snapshot}${s.snapshot_moref ? ` (${s.snapshot_moref})` : ''}`],
        ['Last error', s.last_error || '-'],
      ];
      status.replaceChildren(...items.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { 'data-field': k.toLowerCase() }, v)]));
      if (sizeInput) {
        sizeInput.min = pool.spec.min_size;
        sizeInput.max = pool.spec.max_size;
        boundsText.textContent = `between ${pool.spec.min_size} and ${pool.spec.max_size}`;
        // Never overwrite what someone is typing.
        if (!sizeInput.dataset.dirty && document.activeElement !== sizeInput) sizeInput.value = s.target;
      }
      if (pauseButton) pauseButton.textContent = s.paused ? 'Resume' : 'Pause';
    }

    function desktopRow(d) {
      const ip = d.ip_address ?? d.ip ?? null;
      const claimed = d.claimed_by ?? null;
      const cells = [
        d.name,
        badge(d.state),
        d.powered_on ? 'on' : 'off',
        ip || '-',
        d.snapshot_moref || '-',
        claimed || '-',
        h('span', { title: fmtTime(d.created_at), text: age(d.created_at) }),
      ];
      if (me.may.replace_desktops) {
        const err = h('span', { class: 'error', role: 'alert' });
        const b = h('button', {
          type: 'button', class: 'danger', text: 'Replace',
          'aria-label': `Replace desktop ${d.name}`, disabled: d.state === 'deleting',
        });
        b.addEventListener('click', async () => {
          if (!(await confirmAction(`Replace desktop ${d.name}? It is destroyed and a new desktop is made in its place.`, `Replace ${d.name}`))) {
            b.focus();
            return;
          }
          if (await act(err, () => api('DELETE', `${path}/desktops/${encodeURIComponent(d.name)}`))) {
            say(`Desktop ${d.name} is being replaced`);
            tick();
          }
        });
        cells.push(h('span', { class: 'inline' }, b, err));
      }
      return cells;
    }

    return {
      el: f.el,
      problem: f.problem,
      async refresh() {
        const q = new URLSearchParams({ limit: String(DESKTOP_PAGE) });
        if (after) q.set('after', after);
        const [p, page, ev] = await Promise.all([
          api('GET', path),
          api('GET', `${path}/desktops?${q}`),
          api('GET', `/api/v1/events?pool=${encodeURIComponent(name)}&limit=10`),
        ]);
        pool = p;
        render();
        const t = table(`Desktops of pool ${name}`, cols);
        t.tbody.replaceChildren(...page.desktops.map((d) => row(cols, desktopRow(d), { 'data-desktop': d.name, 'data-state': d.state })));
        redraw(desktopsHolder, page.desktops.length ? t.el : h('p', { class: 'hint', text: 'No desktops.' }));
        next = page.next;
        prev.disabled = cursors.length === 0 && !after;
        nextB.disabled = !next;
        redraw(eventsHolder, eventList(ev.events, false).el);
        f.stamp();
      },
    };
  }

  // ---- events -----------------------------------------------------------------------------

  function eventsView(poolFilter) {
    const f = frame('Events');
    const select = h('select', { id: 'event-pool' }, h('option', { value: '', text: 'All pools' }));
    select.addEventListener('change', () => {
      location.hash = select.value ? `#/events?pool=${encodeURIComponent(select.value)}` : '#/events';
    });
    f.el.append(h('div', { class: 'inline' }, h('label', { for: 'event-pool', text: 'Pool' }), select));
    const holder = h('div');
    const older = h('button', { type: 'button', text: 'Older events', disabled: true });
    const newest = h('button', { type: 'button', text: 'Newest events', disabled: true });
    let before = null;
    let next = null;
    older.addEventListener('click', () => { before = next; tick(); });
    newest.addEventListener('click', () => { before = null; tick(); });
    f.el.append(holder, h('div', { class: 'pager' }, newest, older));
    let poolsLoaded = false;
    return {
      el: f.el,
      problem: f.problem,
      async refresh() {
        if (!poolsLoaded) {
          const { pools } = await api('GET', '/api/v1/pools');
          const names = pools.map((p) => p.name);
          if (poolFilter && !names.includes(poolFilter)) names.push(poolFilter);
          select.append(...names.map((n) => h('option', { value: n, text: n })));
          select.value = poolFilter;
          poolsLoaded = true;
        }
        const q = new URLSearchParams({ limit: String(EVENT_PAGE) });
        if (poolFilter) q.set('pool', poolFilter);
        if (before) q.set('before', String(before));
        const page = await api('GET', `/api/v1/events?${q}`);
        holder.replaceChildren(page.events.length
          ? eventList(page.events, true).el
          : h('p', { class: 'hint', text: 'No events.' }));
        next = page.next;
        older.disabled = !next;
        newest.disabled = !before;
        f.stamp();
      },
    };
  }

  // ---- tokens (admin) -----------------------------------------------------------------------

  function tokensView() {
    const f = frame('Tokens');
    const name = h('input', { id: 'new-token-name', type: 'text', maxlength: '100', required: true, autocomplete: 'off' });
    const role = h('select', { id: 'new-token-role' }, ['viewer', 'broker', 'helpdesk', 'admin'].map((r) => h('option', { value: r, text: r })));
    const err = h('p', { id: 'token-error', class: 'error', role: 'alert' });
    const secretBox = h('div', { class: 'secret', hidden: true });
    const form = h('form', { id: 'token-form', method: 'post', novalidate: true },
      h('label', { for: 'new-token-name', text: 'Name' }), name,
      h('label', { for: 'new-token-role', text: 'Role' }), role,
      h('button', { type: 'submit', text: 'Create token' }), err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let created = null;
      if (await act(err, async () => { created = await api('POST', '/api/v1/tokens', { name: name.value.trim(), role: role.value }); })) {
        const out = h('input', { id: 'new-token-secret', type: 'text', readonly: true, value: created.secret, 'aria-describedby': 'secret-hint' });
        secretBox.replaceChildren(
          h('label', { for: 'new-token-secret', text: `Secret of token ${created.token.name} (${created.token.role})` }), out,
          h('p', { id: 'secret-hint', class: 'hint', text: 'Copy it now: it is shown only this once and cannot be read back.' }));
        secretBox.hidden = false;
        name.value = '';
        out.focus();
        out.select();
        tick();
      }
    });
    const holder = h('div');
    f.el.append(h('h2', { text: 'New token' }), form, secretBox, h('h2', { text: 'All tokens' }), holder);
    const cols = ['Name', 'Role', 'Created', 'Last used', 'Status', 'Revoke'];
    return {
      el: f.el,
      problem: f.problem,
      async refresh() {
        const { tokens } = await api('GET', '/api/v1/tokens');
        const t = table('API tokens', cols);
        t.tbody.replaceChildren(...tokens.map((tk) => {
          const rerr = h('span', { class: 'error', role: 'alert' });
          const b = tk.revoked_at ? null : h('button', { type: 'button', class: 'danger', text: 'Revoke', 'aria-label': `Revoke token ${tk.name}` });
          if (b) {
            b.addEventListener('click', async () => {
              if (!(await confirmAction(`Revoke token ${tk.name}? Requests with it fail from now on.`, `Revoke ${tk.name}`))) return;
              if (await act(rerr, () => api('DELETE', `/api/v1/tokens/${encodeURIComponent(tk.name)}`))) {
                say(`Token ${tk.name} revoked`);
                tick();
              }
            });
          }
          return row(cols, [tk.name, tk.role, fmtTime(tk.created_at), fmtTime(tk.last_used_at),
            tk.revoked_at ? `revoked ${fmtTime(tk.revoked_at)}` : 'active',
            h('span', { class: 'inline' }, b, rerr)], { 'data-token': tk.name });
        }));
        redraw(holder, t.el);
        f.stamp();
      },
    };
  }

  // ---- start --------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', async () => {
    $('signin-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', () => signOut('Signed out.'));
    window.addEventListener('hashchange', () => { if (location.hash.startsWith('#/') || !location.hash) route(); });
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showSignIn();
      return;
    }
    try {
      me = await api('GET', '/api/v1/whoami');
      signedIn();
    } catch (e) {
      if (e.status !== 401) signOut(`Sign-in failed: ${e.message}`);
    }
  });
})();
