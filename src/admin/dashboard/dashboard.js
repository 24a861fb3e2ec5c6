(() => {
  "use strict";

  const TOKEN_KEY = "switchyard.token";
  const MAX_EVENTS = 50;
  const HISTORY = 60;
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text != null) n.textContent = String(text);
    return n;
  };
  // Only touching nodes whose text really changed keeps aria-live regions from re-announcing.
  const setText = (node, text) => {
    const t = text == null ? "" : String(text);
    if (node.textContent !== t) node.textContent = t;
  };
  const show = (node, on) => { node.hidden = !on; };
  const attrs = (node, a) => {
    for (const k of Object.keys(a)) node.setAttribute(k, a[k]);
    return node;
  };
  const visible = (node) => node.getClientRects().length > 0;

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let rights = null;
  let status = null;
  let streamCtl = null;
  let retryTimer = 0;
  let backoff = 0;
  let actionsSig = "";
  let dialogAction = null;
  let dialogTrigger = null;
  let dialogSeq = 0;
  const cards = new Map();
  const history = new Map();

  const pad = (n) => String(n).padStart(2, "0");
  const toDate = (s) => {
    if (!s) return null;
    const d = new Date(s);
    return isNaN(d) ? null : d;
  };
  const hms = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const sameDay = (a, b) => a.toDateString() === b.toDateString();
  const when = (d) => {
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (sameDay(d, new Date())) return hm;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm}`;
  };
  const span = (secs) => {
    secs = Math.abs(Math.round(secs));
    if (secs < 60) return "under a minute";
    const m = Math.round(secs / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
    return `${Math.round(h / 24)} days`;
  };
  const relative = (d) => {
    const s = (d - Date.now()) / 1000;
    return s >= 0 ? `in ${span(s)}` : `${span(s)} ago`;
  };
  const timeNode = (iso, withRel) => {
    const d = toDate(iso);
    if (!d) return "–";
    const t = el("time", null, withRel ? `${when(d)} (${relative(d)})` : when(d));
    t.dateTime = d.toISOString();
    t.title = d.toString();
    return t;
  };
  const modeText = (m) => (m === "read_only" ? "read-only" : m || "full");

  /* ---------- HTTP ---------- */

  const headers = (extra, tok = token) => {
    const h = Object.assign({}, extra);
    if (tok) h.Authorization = `Bearer ${tok}`;
    return h;
  };

  async function api(method, path, body, tok = token) {
    const h = headers({ Accept: "application/json" }, tok);
    if (method !== "GET") h["Content-Type"] = "application/json";
    let res;
    let data = null;
    try {
      res = await fetch(path, { method, cache: "no-store", headers: h, body: body && JSON.stringify(body) });
    } catch (e) {
      return { status: 0, data, error: "Could not reach switchyard." };
    }
    try { data = await res.json(); } catch (e) { /* non-JSON body: the HTTP status is reported instead */ }
    const error = res.ok ? null : data?.error?.message || `Request failed (HTTP ${res.status}).`;
    return { status: res.status, data, error };
  }

  const setConn = (text, cls) => {
    const c = $("connection");
    setText(c, text);
    c.className = `conn-state ${cls || ""}`;
  };

  function stopStream() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    if (streamCtl) streamCtl.abort();
    streamCtl = null;
  }

  function showLogin(message) {
    stopStream();
    rights = null;
    status = null;
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    setConn("Logged out", "off");
    show($("dash"), false);
    show($("logout"), false);
    show($("login-section"), true);
    if ($("confirm").open) $("confirm").close();
    // Nothing from the previous session stays in the page after logging out.
    $("events-list").replaceChildren();
    show($("events-empty"), true);
    $("pools").replaceChildren();
    cards.clear();
    history.clear();
    actionsSig = "";
    setText($("login-error"), message || "");
    $("token").value = "";
    $("token").focus();
  }

  function enterDashboard(doc) {
    show($("login-section"), false);
    show($("dash"), true);
    show($("logout"), !!token);
    setText($("login-error"), "");
    if (doc) renderStatus(doc);
    startStream();
  }

  async function start() {
    const r = await api("GET", "/v1/status");
    if (r.status === 401) return showLogin(token ? "That token was refused" : "");
    // If the status is not readable yet, the event stream's own backoff does the retrying.
    if (r.status !== 200) setConn("Reconnecting…", "warn");
    enterDashboard(r.status === 200 && r.data);
  }

  $("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const tok = $("token").value.trim();
    const errEl = $("login-error");
    if (!tok) {
      setText(errEl, "Enter a token.");
      $("token").focus();
      return;
    }
    const btn = $("login-submit");
    btn.disabled = true;
    setText(errEl, "");
    const r = await api("GET", "/v1/status", undefined, tok);
    btn.disabled = false;
    if (r.status === 200 && r.data) {
      token = tok;
      sessionStorage.setItem(TOKEN_KEY, tok);
      $("token").value = "";
      enterDashboard(r.data);
      $("main").focus();
    } else if (r.status === 401) {
      setText(errEl, "That token was refused");
      $("token").select();
    } else {
      setText(errEl, r.error || "Login failed.");
    }
  });

  $("logout").addEventListener("click", () => showLogin(""));

  function scheduleRetry() {
    if (retryTimer) return;
    setConn("Reconnecting…", "warn");
    const delay = Math.min(10000, 1000 * 2 ** backoff);
    backoff = Math.min(backoff + 1, 4);
    retryTimer = setTimeout(() => { retryTimer = 0; startStream(); }, delay);
  }

  async function startStream() {
    stopStream();
    const ctl = new AbortController();
    streamCtl = ctl;
    try {
      const res = await fetch("/v1/events", {
        headers: headers({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal: ctl.signal,
      });
      if (res.status === 401) return showLogin("That token was refused");
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setConn("Live", "on");
      await readSSE(res.body.getReader(), ctl.signal);
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    if (ctl.signal.aborted || streamCtl !== ctl) return;
    streamCtl = null;
    scheduleRetry();
  }

  async function readSSE(reader, signal) {
    const dec = new TextDecoder();
    let buf = "";
    let name = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal.aborted) return;
      buf += dec.decode(value, { stream: true });
      for (;;) {
        const i = buf.search(/[\r\n]/);
        if (i < 0) break;
        // A CR at the end of a chunk may be half of a CRLF split across reads.
        if (buf[i] === "\r" && i === buf.length - 1) break;
        const line = buf.slice(0, i);
        buf = buf.slice(i + (buf[i] === "\r" && buf[i + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (data.length) dispatch(name || "message", data.join("\n"));
          name = "";
          data = [];
          continue;
        }
        if (line[0] === ":") continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        let val = c < 0 ? "" : line.slice(c + 1);
        if (val[0] === " ") val = val.slice(1);
        if (field === "event") name = val;
        else if (field === "data") data.push(val);
      }
    }
  }

  function dispatch(name, raw) {
    let doc;
    try { doc = JSON.parse(raw); } catch (e) { return; }
    if (!doc || typeof doc !== "object") return;
    switch (name) {
      case "hello":
        backoff = 0;
        rights = doc.rights === "full" ? "full" : "read";
        renderActions();
        break;
      case "status": renderStatus(doc); break;
      case "rates": onRates(doc); break;
      case "decision": case "health": case "reload": case "watch":
        addEvent(name, doc);
        break;
      default: break;
    }
  }

  function renderStatus(doc) {
    const first = !status;
    status = doc;
    setText($("live-pool"), doc.live_pool || "–");
    setText($("previous-pool"), doc.previous_pool || "none");
    renderMaintenance(doc.maintenance || {});
    renderPools(doc);
    renderWatch(doc);
    renderDeploy(doc.deploy);
    renderWindows(doc.windows || []);
    renderConfig(doc);
    renderActions();
    if (first && doc.last_event && !$("events-list").firstChild) {
      addEvent("seed", doc.last_event);
    }
  }

  function renderMaintenance(m) {
    const on = !!m.enabled;
    const st = $("maintenance-state");
    setText(st, on ? "on" : "off");
    st.className = `state ${on ? "warn" : "ok"}`;
    show($("maintenance-details"), on);
    setText($("maintenance-message"), on && m.message ? m.message : "");
    show($("mrow-message"), on && !!m.message);
    setText($("maintenance-mode"), m.mode === "read_only" ? "read-only (reads pass, writes refused)" : "full");
    const since = toDate(m.since);
    setText($("maintenance-since"), since ? when(since) : "–");
    const r = m.retry_after_s;
    setText($("maintenance-retry"), typeof r === "number" ? `${r} s${r >= 60 ? ` (${span(r)})` : ""}` : "–");
    refreshClock();
  }

  // Relative times drift, so they are refreshed on a slow timer instead of re-rendering.
  function refreshClock() {
    if (!status) return;
    const m = status.maintenance || {};
    const until = toDate(m.until);
    setText($("maintenance-until-text"), until ? `until ${when(until)}, ${relative(until)}` : "no end set");
    const wu = $("watch-until");
    if (wu && status.watch) {
      const d = toDate(status.watch.until);
      setText(wu, d ? `${when(d)}, ${relative(d)}` : "–");
    }
  }
  setInterval(refreshClock, 15000);

  function badge(text, cls) {
    return el("span", `badge ${cls}`, text);
  }

  function makeCard(name) {
    const root = el("article", "card");
    const head = el("div", "card-head");
    const h = el("h3", null, name);
    const role = el("span", "badge");
    head.append(h, role);

    const stats = el("dl", "stats");
    const stat = (label) => {
      const d = el("div");
      const dd = el("dd", null, "0");
      d.append(el("dt", null, label), dd);
      stats.append(d);
      return dd;
    };
    const inFlight = stat("In flight");
    const tunnels = stat("Tunnels");
    const reqs = stat("Requests/s");
    const errs = stat("Errors/s");

    const fig = attrs(el("div", "chart"), { role: "img", "aria-label": `${name}: no traffic data yet` });
    const svg = attrs(document.createElementNS(SVG, "svg"),
      { viewBox: `0 0 ${HISTORY - 1} 100`, preserveAspectRatio: "none", "aria-hidden": "true", focusable: "false" });
    const line = (cls) => svg.appendChild(attrs(document.createElementNS(SVG, "polyline"),
      { class: cls, "vector-effect": "non-scaling-stroke", fill: "none" }));
    const reqLine = line("l-req");
    const errLine = line("l-err");
    const scale = attrs(el("span", "scale"), { "aria-hidden": "true" });
    fig.append(svg, scale);
    const legend = attrs(el("p", "legend"), { "aria-hidden": "true" });
    legend.append(el("span", "k-req", "requests/s"), el("span", "k-err", "errors/s"), el("span", "muted", "last 60 s"));
    const now = el("p", "vh", "No traffic data yet.");

    const ups = el("ul", "upstreams");
    root.append(head, stats, fig, legend, now, el("h4", null, "Upstreams"), ups);
    return { root, role, inFlight, tunnels, reqs, errs, fig, reqLine, errLine, scale, now, ups, labelAt: 0 };
  }

  function renderPools(doc) {
    const pools = doc.pools || {};
    const box = $("pools");
    const names = Object.keys(pools);
    for (const [n, c] of cards) {
      if (!names.includes(n)) { c.root.remove(); cards.delete(n); history.delete(n); }
    }
    names.forEach((name, idx) => {
      let c = cards.get(name);
      if (!c) { c = makeCard(name); cards.set(name, c); }
      if (box.children[idx] !== c.root) box.insertBefore(c.root, box.children[idx] || null);
      const p = pools[name] || {};
      const live = name === doc.live_pool;
      setText(c.role, live ? "live" : "preview");
      c.role.className = `badge ${live ? "live" : "preview"}`;
      c.root.classList.toggle("is-live", live);
      setText(c.inFlight, p.in_flight ?? 0);
      setText(c.tunnels, p.tunnels ?? 0);
      const ups = p.upstreams || [];
      c.ups.replaceChildren(...ups.map(upstreamItem));
      if (!ups.length) c.ups.append(el("li", "muted", "No upstreams configured."));
    });
  }

  function upstreamItem(u) {
    const li = el("li");
    const top = el("div", "up-top");
    top.append(el("code", null, u.addr), u.healthy ? badge("healthy", "ok") : badge("unhealthy", "bad"));
    li.append(top);
    if (u.last_error) li.append(el("p", "up-err", `Last error: ${u.last_error}`));
    const meta = el("p", "muted small");
    meta.append("Checked ", toDate(u.last_check) ? timeNode(u.last_check) : "never");
    if (u.consecutive_failures) meta.append(` · ${u.consecutive_failures} failed checks in a row`);
    li.append(meta);
    return li;
  }

  function onRates(doc) {
    const pools = doc.pools || {};
    for (const name of Object.keys(pools)) {
      const r = pools[name] || {};
      let h = history.get(name);
      if (!h) { h = []; history.set(name, h); }
      h.push({ r: +r.requests || 0, e: +r.errors || 0 });
      if (h.length > HISTORY) h.splice(0, h.length - HISTORY);
      const c = cards.get(name);
      if (c) drawCard(name, c, r, h);
    }
  }

  function niceMax(v) {
    if (v <= 1) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawCard(name, c, r, h) {
    const req = +r.requests || 0;
    const err = +r.errors || 0;
    setText(c.reqs, req);
    setText(c.errs, err);
    if (r.in_flight != null) setText(c.inFlight, r.in_flight);
    if (r.tunnels != null) setText(c.tunnels, r.tunnels);
    const max = niceMax(Math.max(...h.map((s) => Math.max(s.r, s.e))));
    const off = HISTORY - h.length;
    const pts = (k) => h.map((s, i) => `${off + i},${(100 - (s[k] / max) * 96 - 2).toFixed(1)}`).join(" ");
    c.reqLine.setAttribute("points", pts("r"));
    c.errLine.setAttribute("points", pts("e"));
    setText(c.scale, `max ${max}/s`);
    const summary = `${name}: ${req} requests/s, ${err} errors/s, ${c.inFlight.textContent} in flight`;
    setText(c.now, `Now: ${summary}.`);
    // Screen readers re-read a changed label; once per 5 s is informative without chatter.
    const now = Date.now();
    if (now - c.labelAt >= 5000) {
      c.labelAt = now;
      c.fig.setAttribute("aria-label", summary);
    }
  }

  function kvRow(dl, label, value) {
    const d = el("div");
    const dd = el("dd");
    if (value instanceof Node) dd.append(value); else dd.textContent = value == null ? "–" : String(value);
    d.append(el("dt", null, label), dd);
    dl.append(d);
    return dd;
  }

  function renderWatch(doc) {
    const box = $("watch");
    const w = doc.watch;
    const rules = doc.config && doc.config.switch;
    const nodes = [];
    if (w) {
      const dl = el("dl", "kv");
      kvRow(dl, "Pool", w.pool);
      const u = kvRow(dl, "Until", "");
      u.id = "watch-until";
      kvRow(dl, "Requests", w.requests ?? 0);
      kvRow(dl, "Errors", w.errors ?? 0);
      if (w.requests) kvRow(dl, "Error rate", `${((100 * (w.errors || 0)) / w.requests).toFixed(1)} %`);
      nodes.push(dl);
    } else {
      nodes.push(el("p", "muted", "No watch running."));
    }
    if (rules) {
      const dl = el("dl", "kv");
      const v = rules.max_error_rate;
      if (rules.watch != null) kvRow(dl, "Watch after switch", typeof rules.watch === "number" ? `${rules.watch} s` : rules.watch);
      if (v != null) kvRow(dl, "Max error rate", typeof v === "number" && v > 0 && v < 1 ? `${v} (${+(v * 100).toFixed(2)} %)` : v);
      if (rules.min_requests != null) kvRow(dl, "Min requests", rules.min_requests);
      if (dl.firstChild) nodes.push(el("h3", "sub", "Switch rules"), dl);
    }
    box.replaceChildren(...nodes);
    refreshClock();
  }

  function renderDeploy(d) {
    const box = $("deploy");
    if (!d) { box.replaceChildren(el("p", "muted", "No deploy running.")); return; }
    const dl = el("dl", "kv");
    kvRow(dl, "ID", d.id);
    kvRow(dl, "Pool", d.pool);
    kvRow(dl, "Holder", d.holder);
    kvRow(dl, "Started", timeNode(d.started_at, true));
    box.replaceChildren(dl);
  }

  function renderWindows(list) {
    const box = $("windows");
    if (!list.length) { box.replaceChildren(el("p", "muted", "No windows scheduled")); return; }
    const ul = el("ul", "windows");
    const now = Date.now();
    for (const w of list) {
      const li = el("li");
      const head = el("p");
      head.append(el("strong", null, w.id), ": ", timeNode(w.starts_at), " – ", timeNode(w.ends_at), ` · ${modeText(w.mode)}`);
      const s = toDate(w.starts_at);
      const e = toDate(w.ends_at);
      if (s && e && s <= now && now < e) head.append(" ", badge("active now", "warnb"));
      li.append(head);
      if (w.message) li.append(el("p", "muted", w.message));
      ul.append(li);
    }
    box.replaceChildren(ul);
  }

  function renderConfig(doc) {
    const c = doc.config || {};
    const err = c.last_reload_error;
    const banner = $("reload-error");
    setText(banner, err ? `Last config reload failed: ${err}. The previous configuration is still in use.` : "");
    show(banner, !!err);
    const dl = $("config");
    dl.replaceChildren();
    kvRow(dl, "Path", el("code", null, c.path || "–"));
    kvRow(dl, "Loaded", timeNode(c.loaded_at));
    if (c.version) kvRow(dl, "Version", el("code", null, c.version));
    kvRow(dl, "Generation", doc.generation ?? "–");
    const l = doc.listeners || {};
    for (const k of Object.keys(l)) kvRow(dl, `Listener ${k}`, el("code", null, l[k]));
    const re = kvRow(dl, "Last reload error", err || "none");
    if (err) re.className = "bad-text";
  }

  // Returns [label, text, failed]; a failure gets a distinct label word, not just a colour.
  function describe(type, ev) {
    const why = ev.reason || "";
    switch (type) {
      case "health": return [ev.healthy ? "healthy" : "unhealthy", `${ev.pool} ${ev.upstream}${why && `: ${why}`}`, !ev.healthy];
      case "reload": return [ev.ok ? "reload ok" : "reload failed", why, !ev.ok];
      case "watch":
        return [ev.kind === "passed" ? "watch passed" : String(ev.kind).replace(/_/g, " "),
          `${ev.pool ? `${ev.pool}: ` : ""}${why}`, ev.kind !== "passed"];
      default: return [ev.kind || type, why, false];
    }
  }

  function addEvent(type, ev) {
    const list = $("events-list");
    const [kind, text, bad] = describe(type, ev);
    const li = el("li", bad ? "ev-bad" : "");
    const at = toDate(ev.at) || new Date();
    const t = el("time", "ev-time", hms(at));
    t.dateTime = at.toISOString();
    li.append(t, el("span", "ev-kind", kind), el("span", "ev-text", text));
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    show($("events-empty"), false);
  }

  function renderActions() {
    const box = $("actions");
    const full = rights === "full" && !!status;
    show(box, full);
    if (!full) { actionsSig = ""; return; }
    const s = status;
    const mOn = !!(s.maintenance && s.maintenance.enabled);
    const items = [];
    for (const p of Object.keys(s.pools || {})) {
      if (p !== s.live_pool) items.push([`switch-to-${p}`, `Switch to ${p}`, () => askMove(p, false)]);
    }
    if (s.previous_pool) items.push(["rollback", `Roll back to ${s.previous_pool}`, () => askMove(s.previous_pool, true)]);
    items.push(["maintenance-on", mOn ? "Change maintenance…" : "Turn maintenance on…", askMaintenanceOn]);
    if (mOn) items.push(["maintenance-off", "Turn maintenance off", askMaintenanceOff]);
    // Rebuilding only on a real change keeps keyboard focus on the button the operator is on.
    const sig = items.map((i) => i[0] + "|" + i[1]).join("\n");
    if (sig === actionsSig) return;
    actionsSig = sig;
    const focused = document.activeElement && document.activeElement.id;
    const wrap = $("action-buttons");
    wrap.replaceChildren(...items.map(([id, label, fn]) => {
      const b = el("button", id.startsWith("maintenance") ? "" : "primary", label);
      b.type = "button";
      b.id = id;
      b.addEventListener("click", () => { dialogTrigger = id; fn(); });
      return b;
    }));
    if (focused && $(focused) && wrap.contains($(focused))) $(focused).focus();
  }

  function openDialog(title, text, opts) {
    const dlg = $("confirm");
    setText($("confirm-title"), title);
    setText($("confirm-text"), text);
    setText($("confirm-yes"), opts.yes || "Confirm");
    $("confirm-yes").disabled = !!opts.wait;
    $("confirm-yes").classList.toggle("danger", !!opts.danger);
    show($("probe"), !!opts.probe);
    setText($("probe-status"), opts.probe ? "Checking upstreams…" : "");
    $("probe-list").replaceChildren();
    show($("maint-fields"), !!opts.maint);
    show($("force-row"), false);
    $("force").checked = false;
    dialogAction = opts.run;
    dialogSeq++;
    setText($("action-error"), "");
    if (!dlg.open) dlg.showModal();
    (opts.maint ? $("maintenance-message-input") : $("confirm-no")).focus();
  }

  async function runProbe(pool) {
    const seq = dialogSeq;
    const r = await api("POST", `/v1/pools/${encodeURIComponent(pool)}/probe`);
    if (!$("confirm").open || seq !== dialogSeq) return;
    const list = $("probe-list");
    let passed = false;
    if (r.error || !r.data) {
      setText($("probe-status"), `Could not probe ${pool}: ${r.error || "no answer"}`);
    } else {
      const ups = r.data.upstreams || [];
      passed = !!r.data.passed;
      list.replaceChildren(...ups.map((u) => {
        const ok = !u.error;
        const li = el("li", ok ? "ok-text" : "bad-text");
        li.append(el("span", "vh", ok ? "Passed: " : "Failed: "), el("span", "mark", ok ? "✓" : "✕"));
        li.lastChild.setAttribute("aria-hidden", "true");
        li.append(ok ? `${u.addr} answers` : `${u.addr}: ${u.error}`);
        return li;
      }));
      setText($("probe-status"), passed
        ? `Probe of ${pool}: ${ups.filter((u) => !u.error).length} of ${ups.length} upstreams answer.`
        : `No upstream of ${pool} answered. The switch will be refused unless forced.`);
    }
    show($("force-row"), !passed);
    $("confirm-yes").disabled = false;
  }

  function askMove(pool, back) {
    const verb = back ? "Roll back to" : "Switch to";
    openDialog(`${verb} ${pool}?`, `All new traffic will go to ${pool}.`, {
      probe: true, wait: true, yes: `${verb} ${pool}`, danger: back,
      run: () => act("POST", back ? "/v1/rollback" : "/v1/switch",
        back ? { force: $("force").checked } : { to: pool, force: $("force").checked }),
    });
    runProbe(pool);
  }

  function askMaintenanceOn() {
    const m = (status && status.maintenance) || {};
    $("maintenance-message-input").value = m.enabled && m.message ? m.message : "";
    $("maintenance-read-only").checked = m.enabled ? m.mode === "read_only" : false;
    $("maintenance-until").value = "";
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    setText($("until-hint"), `Leave empty for no end. Time zone: ${tz || "local"}.`);
    openDialog(m.enabled ? "Change maintenance" : "Turn maintenance on?",
      "Clients get the maintenance answer, with the message below, until it is turned off or the end time passes.", {
        maint: true, yes: m.enabled ? "Update maintenance" : "Turn maintenance on", danger: true,
        run: () => {
          const body = { enabled: true };
          const msg = $("maintenance-message-input").value.trim();
          if (msg) body.message = msg;
          if ($("maintenance-read-only").checked) body.mode = "read_only";
          // datetime-local has no zone: Date reads it as local time, toISOString gives UTC.
          const u = $("maintenance-until").value;
          if (u) body.until = new Date(u).toISOString().replace(/\.\d{3}Z$/, "Z");
          return act("PUT", "/v1/maintenance", body);
        },
      });
  }

  function askMaintenanceOff() {
    openDialog("Turn maintenance off?", "Clients will be served normally again.", {
      yes: "Turn maintenance off",
      run: () => act("PUT", "/v1/maintenance", { enabled: false }),
    });
  }

  async function act(method, path, body) {
    const r = await api(method, path, body);
    closeDialog();
    if (r.status === 401) return showLogin("That token was refused");
    const good = r.status === 200 && r.data;
    setText($("action-error"), good ? "" : r.error || "The request failed.");
    if (good) renderStatus(r.data);
  }

  function closeDialog() {
    const dlg = $("confirm");
    if (dlg.open) dlg.close();
  }

  $("confirm-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const yes = $("confirm-yes");
    if (!dialogAction || yes.disabled) return;
    yes.disabled = true;
    $("confirm").setAttribute("aria-busy", "true");
    await dialogAction();
  });
  $("confirm-no").addEventListener("click", closeDialog);
  $("confirm").addEventListener("close", () => {
    const dlg = $("confirm");
    dlg.removeAttribute("aria-busy");
    dialogAction = null;
    const back = dialogTrigger && $(dialogTrigger);
    if (back && visible(back)) back.focus();
    else if (visible($("actions-h"))) $("actions-h").focus();
  });

  start();
})();
