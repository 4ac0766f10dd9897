// The gateway console: a thin client of the admin API (contract §4), no second source of
// truth. Plain JavaScript, no build step, no framework, nothing fetched from elsewhere.
//
// Safety rules, kept everywhere below:
// - every value from the API (above all Host values from the blocked-hosts list, which
//   anyone on the internet chooses) reaches the page through textContent, createTextNode
//   or setAttribute on inert attributes; never innerHTML, never a template into markup;
// - the token lives in sessionStorage (this tab only) and travels as
//   "Authorization: Bearer", never as a cookie, so there is nothing for CSRF to ride on;
// - the page runs under "script-src 'self'; style-src 'self'": no inline script, no
//   inline style attribute, no eval.
"use strict";

(() => {
  const TOKEN_KEY = "gateway-console-token";
  const API = "/api/v1";
  const BLOCKED_ROWS = 25;
  const AUDIT_ROWS = 50;
  const SHOW_CHARS = 96; // longer blocked Host values are shown cut (whole in the tooltip)
  // Poll period for counters (rates are deltas between two polls); ?poll=MS overrides.
  const POLL_MS = (() => {
    const v = Number.parseInt(new URLSearchParams(location.search).get("poll") || "", 10);
    return Number.isFinite(v) ? Math.min(Math.max(v, 500), 60000) : 3000;
  })();
  // Reasons of blocked-host rows that adding the value to the list would fix.
  // "no_route": refused on a listener with several environments and no default, before any
  // environment claimed it (listed under the environment "" by the API).
  const ALLOWABLE_REASONS = new Set(["unknown_host", "would_block", "no_route"]);

  // Multi-label public suffixes: the same subset as gateway/hosts.py
  // (_COMMON_PUBLIC_SUFFIXES; tests/test_console.py checks that they agree). Used only to
  // find a value's registrable domain for the "new domain" warning.
  const PUBLIC_SUFFIXES = new Set(`
    co.uk org.uk me.uk ltd.uk plc.uk net.uk sch.uk ac.uk gov.uk nhs.uk police.uk
    com.au net.au org.au edu.au gov.au asn.au id.au
    co.nz net.nz org.nz govt.nz ac.nz
    co.jp ne.jp or.jp ac.jp go.jp ad.jp ed.jp gr.jp lg.jp
    co.kr or.kr ne.kr re.kr go.kr ac.kr
    com.cn net.cn org.cn gov.cn edu.cn ac.cn
    com.hk net.hk org.hk edu.hk gov.hk
    com.tw net.tw org.tw edu.tw gov.tw
    com.sg net.sg org.sg edu.sg gov.sg
    com.my net.my org.my edu.my gov.my
    co.in net.in org.in firm.in gen.in ind.in ac.in edu.in gov.in
    co.id or.id ac.id go.id web.id
    co.th or.th ac.th go.th in.th
    com.ph net.ph org.ph com.vn net.vn com.pk com.bd com.np com.lk
    com.br net.br org.br gov.br edu.br art.br
    com.ar net.ar org.ar com.mx net.mx org.mx gob.mx com.co net.co com.pe com.ve com.uy
    com.cl com.ec com.bo com.py
    co.za org.za net.za gov.za ac.za web.za com.ng com.eg com.gh co.ke or.ke co.tz co.ug
    com.tr net.tr org.tr gov.tr co.il org.il ac.il gov.il com.sa net.sa com.qa com.kw
    com.ua net.ua org.ua com.ru net.ru org.ru com.pl net.pl org.pl com.es org.es
    com.pt co.at or.at gv.at com.gr com.cy com.mt
    github.io githubusercontent.com gitlab.io bitbucket.io
    herokuapp.com herokussl.com appspot.com blogspot.com firebaseapp.com web.app
    netlify.app netlify.com vercel.app now.sh pages.dev workers.dev trycloudflare.com
    azurewebsites.net azurestaticapps.net cloudapp.net azureedge.net trafficmanager.net
    cloudfront.net s3.amazonaws.com elasticbeanstalk.com awsapps.com
    fly.dev onrender.com railway.app ngrok.io ngrok-free.app ngrok.app glitch.me
    repl.co replit.dev readthedocs.io wordpress.com wixsite.com myshopify.com
    deno.dev surge.sh pythonanywhere.com
    dyndns.org duckdns.org no-ip.org ddns.net
  `.split(/\s+/).filter(Boolean));

  // ---------------------------------------------------------------------------------------
  // Small DOM helpers (text only)

  const $ = (id) => document.getElementById(id);

  /** el("td", {className: "mono", title: v}, v, otherNode): children are text or nodes. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "className") node.className = v;
      else if (k === "onClick") node.addEventListener("click", v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setMessage(node, text, kind) {
    node.replaceChildren();
    if (!text) {
      show(node, false);
      return;
    }
    node.className = "msg " + (kind === "error" ? "msg-error" : "msg-ok");
    node.append(...(Array.isArray(text) ? text : [text]).map((t) =>
      t instanceof Node ? t : document.createTextNode(String(t))));
    show(node, true);
  }

  function badge(text, kind, title) {
    return el("span", { className: "badge badge-" + kind, title }, text);
  }

  function clearBody(table) {
    const body = table.tBodies[0];
    body.replaceChildren();
    return body;
  }

  function emptyRow(body, columns, text) {
    body.append(el("tr", { className: "empty" }, el("td", { colspan: columns }, text)));
  }

  function fmtTime(value) {
    if (value === undefined || value === null) return "";
    const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    if (Number.isNaN(d.getTime())) return String(value);
    const pad = (n) => String(n).padStart(2, "0");
    const today = new Date();
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === today.toDateString()) return time;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
  }

  function fmtRate(r) {
    if (r === undefined) return "–";
    return r >= 100 ? String(Math.round(r)) : r.toFixed(1);
  }

  // ---------------------------------------------------------------------------------------
  // The admin API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }

    /** The API's own words, plainly: "403 Forbidden: token 'x' has the role viewer; …". */
    describe() {
      const parts = [this.status ? `${this.status} ${STATUS_TEXT[this.status] || ""}`.trim() + ": " : ""];
      parts.push(this.message);
      const errors = Array.isArray(this.body.errors) ? this.body.errors : [];
      for (const e of errors) parts.push(" · " + (typeof e === "string" ? e : JSON.stringify(e)));
      return parts.join("");
    }
  }

  const STATUS_TEXT = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    409: "Conflict", 412: "Precondition Failed", 421: "Misdirected Request",
    422: "Unprocessable Content", 428: "Precondition Required", 500: "Internal Server Error",
    503: "Service Unavailable", 504: "Gateway Timeout", 507: "Insufficient Storage",
  };

  async function api(method, path, body, token) {
    const headers = { Accept: "application/json" };
    const bearer = token === undefined ? state.token : token;
    if (bearer) headers.Authorization = "Bearer " + bearer;
    const init = {
      method, headers, cache: "no-store", credentials: "omit", redirect: "error",
      // A change is answered once the gateway serves it (up to 10 s, then 504): wait longer.
      signal: AbortSignal.timeout(method === "GET" ? 15000 : 30000),
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { error: `the admin listener did not answer (${e.message})` });
    }
    let data = null;
    if ((resp.headers.get("Content-Type") || "").includes("json")) {
      try {
        data = await resp.json();
      } catch (e) {
        data = null;
      }
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, data && typeof data === "object" ? data : null);
    }
    return data;
  }

  // ---------------------------------------------------------------------------------------
  // Host values: validity as an entry, registrable domains, warnings (advice only; the
  // API's 422 is what decides, and its message is shown as it is)

  const LABEL = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?";
  const NAME_RE = new RegExp(`^(${LABEL}(?:\\.${LABEL})*)(\\.?)(?::([0-9]{1,5}))?$`);
  const OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  const IPV4_RE = new RegExp(`^(?:${OCTET}\\.){3}${OCTET}$`);
  const IPV6_RE = /^\[([0-9A-Fa-f:.]{2,45})\](?::([0-9]{1,5}))?$/;

  /** {kind, host, port} for a value that is valid as an entry (wildcards aside), or null. */
  function parseEntryLike(value) {
    if (typeof value !== "string" || value.length === 0 || value.length > 260) return null;
    const portOk = (p) => p === undefined || (Number(p) >= 1 && Number(p) <= 65535);
    let m = IPV6_RE.exec(value);
    if (m) {
      if (!portOk(m[2]) || !m[1].includes(":") || /^[0:]+$/.test(m[1])) return null;
      return { kind: "ipv6", host: "[" + m[1].toLowerCase() + "]", port: m[2] };
    }
    m = NAME_RE.exec(value);
    if (!m || !portOk(m[3])) return null;
    const host = m[1].toLowerCase();
    if (host.length > 253) return null;
    const last = host.slice(host.lastIndexOf(".") + 1);
    if (/^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/.test(last)) {
      // A numeric name must be a canonical dotted quad, without a trailing dot.
      if (m[2] || !IPV4_RE.test(host) || host === "0.0.0.0") return null;
      return { kind: "ipv4", host, port: m[3] };
    }
    return { kind: "name", host, port: m[3] };
  }

  function entryKind(text) {
    if (text.startsWith("*.")) return "wildcard";
    const p = parseEntryLike(text);
    if (!p) return "entry";
    const base = { name: "name", ipv4: "IPv4", ipv6: "IPv6" }[p.kind];
    return p.port ? `${base}, port ${p.port} only` : base;
  }

  function registrableDomain(host) {
    const labels = host.toLowerCase().replace(/^\*\./, "").replace(/\.$/, "").split(".");
    for (const k of [3, 2]) {
      if (labels.length > k && PUBLIC_SUFFIXES.has(labels.slice(-k).join("."))) {
        return labels.slice(-(k + 1)).join(".");
      }
    }
    return labels.slice(-2).join(".");
  }

  function hostOf(entry) {
    const p = parseEntryLike(entry.replace(/^\*\./, ""));
    return p ? p : null;
  }

  /** Why allowing `value` in `env` deserves a second look: a list of sentences. */
  function warningsFor(value, env) {
    const out = [];
    if (value.includes("*")) {
      out.push("Wildcard-looking value: a “*.suffix” entry lets in every name under the " +
        "suffix, including names nobody has created yet, and anything else with “*” is " +
        "refused. The product page does not support wildcards at all.");
    }
    const p = parseEntryLike(value.replace(/^\*\./, ""));
    if (p && (p.kind === "ipv4" || p.kind === "ipv6")) {
      out.push("IP literal: requests that name the address instead of a hostname usually " +
        "come from scanners or clients bypassing DNS. Allowing it lets anyone who reaches " +
        "the address through.");
    }
    if (p && p.kind === "name") {
      const domain = registrableDomain(p.host);
      const known = new Set([env.hostname, ...env.secure_endpoints]
        .map(hostOf).filter((h) => h && h.kind === "name").map((h) => registrableDomain(h.host)));
      if (!known.has(domain)) {
        out.push(`New domain: ${domain} is not the domain of this environment's hostname ` +
          "or of any of its secure endpoints. Make sure you own it.");
      }
    }
    return out;
  }

  /** A sentence about the port when the value has one (an entry with a port is that port only). */
  function portNote(value) {
    const p = parseEntryLike(value);
    return p && p.port ? ` Only port ${p.port}: the same host on other ports stays refused.` : "";
  }

  function normalisedEntry(value) {
    return value.toLowerCase().replace(/\.(?=(:[0-9]+)?$)/, "");
  }

  // ---------------------------------------------------------------------------------------
  // State

  const state = {
    token: null,
    who: null,
    doc: null, // GET /environments
    selected: null,
    blocked: [],
    audit: [],
    prev: new Map(), // name -> {t, allowed, blocked, would}
    rates: new Map(), // name -> {allowed, blocked, would}
    timer: null,
    session: 0, // bumped on sign-in and sign-out: late answers of a past session are dropped
    running: null,
    again: false,
    rendered: {}, // table -> signature of what it shows (re-render only on change)
  };

  function env() {
    return state.doc && state.doc.environments.find((e) => e.name === state.selected);
  }

  /** Why the selected environment cannot be changed here, or "" when it can. */
  function readOnlyReason(e) {
    if (!state.doc || !e) return "read-only";
    if (state.doc.management === "external") return "external";
    if (state.who && state.who.role !== "admin") return "viewer";
    if (e.locked) return "locked";
    return "";
  }

  // ---------------------------------------------------------------------------------------
  // Sign in and out

  function showSignin(message) {
    show($("app"), false);
    show($("session"), false);
    show($("signin"), true);
    setMessage($("signin-error"), message || "", "error");
    $("token").value = "";
    $("token").focus();
    // Without a tokens file a loopback admin listener answers reads to anyone on the
    // machine (contract §4): say so, and let the user in read-only without a token.
    show($("open-reads"), false);
    api("GET", API + "/whoami", undefined, "").then(
      (who) => show($("open-reads"), who && who.name === "anonymous"),
      () => {},
    );
  }

  function continueAnonymous() {
    api("GET", API + "/whoami", undefined, "").then((who) => {
      state.token = "";
      enter(who);
    }, (e) => setMessage($("signin-error"), "Could not continue: " + describe(e), "error"));
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      setMessage($("signin-error"), "Paste a token first.", "error");
      return;
    }
    $("signin-button").disabled = true;
    try {
      const who = await api("GET", API + "/whoami", undefined, token);
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      enter(who);
    } catch (e) {
      setMessage($("signin-error"), "Sign-in failed: " + describe(e), "error");
    } finally {
      $("signin-button").disabled = false;
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(state.timer);
    Object.assign(state, {
      token: null, who: null, doc: null, blocked: [], audit: [], timer: null, rendered: {},
      session: state.session + 1,
    });
    state.prev.clear();
    state.rates.clear();
    for (const id of ["envs", "endpoints", "blocked", "candidate", "audit"]) clearBody($(id));
    setMessage($("endpoints-msg"), "");
    setMessage($("blocked-msg"), "");
    setBanner($("banner-error"), "");
    $("who").replaceChildren();
    showSignin(message);
  }

  function enter(who) {
    state.who = who;
    state.session += 1;
    state.rendered = {};
    $("who").replaceChildren(
      el("span", { className: "who-name" }, who.name),
      badge(who.role, who.role === "admin" ? "admin" : "viewer"),
    );
    show($("signin"), false);
    show($("session"), true);
    show($("app"), true);
    $("poll-note").textContent = "";
    refresh();
  }

  function describe(e) {
    return e instanceof ApiError ? e.describe() : String(e && e.message ? e.message : e);
  }

  // ---------------------------------------------------------------------------------------
  // Polling: environments (with counters), the selected environment's blocked hosts, audit

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, POLL_MS);
  }

  /** One refresh at a time; a request made meanwhile runs right after. */
  async function refresh() {
    if (state.token === null || !state.who) return;
    if (state.running) {
      state.again = true;
      return state.running;
    }
    state.running = doRefresh().finally(() => {
      state.running = null;
      if (state.again) {
        state.again = false;
        refresh();
      } else if (state.token !== null) {
        schedule();
      }
    });
    return state.running;
  }

  async function doRefresh() {
    const session = state.session;
    try {
      const doc = await api("GET", API + "/environments");
      if (session !== state.session) return; // signed out meanwhile
      noteRates(doc.environments);
      state.doc = doc;
      const wanted = new URLSearchParams(location.hash.slice(1)).get("env");
      const names = doc.environments.map((e) => e.name);
      state.selected = names.includes(wanted) ? wanted
        : names.includes(state.selected) ? state.selected : names[0] || null;
      // All tables: the selected environment's, and the refusals no environment claimed
      // (shown with it, so that a host refused for want of a route can be allowed here).
      const [blocked, audit] = await Promise.all([
        state.selected
          ? api("GET", `${API}/blocked-hosts?limit=${BLOCKED_ROWS}`)
          : Promise.resolve({ environments: {} }),
        api("GET", `${API}/audit?limit=${AUDIT_ROWS}`),
      ]);
      if (session !== state.session) return;
      const tables = blocked.environments || {};
      state.blocked = [
        ...(tables[state.selected] || []),
        ...(tables[""] || []).map((r) => ({ ...r, unclaimed: true })),
      ];
      state.audit = audit.records || [];
      setBanner($("banner-error"), "");
      render();
      $("poll-note").textContent = `updated ${fmtTime(Date.now() / 1000)} · every ${POLL_MS / 1000} s`;
    } catch (e) {
      if (session !== state.session) return;
      if (e instanceof ApiError && e.status === 401) {
        signOut("Signed out: the gateway no longer accepts this token (" + describe(e) + ").");
        return;
      }
      setBanner($("banner-error"), "Could not refresh: " + describe(e));
    }
  }

  function setBanner(node, text) {
    node.textContent = text;
    show(node, Boolean(text));
  }

  function sumCounters(counters, prefix) {
    let n = 0;
    for (const [k, v] of Object.entries(counters || {})) if (k.startsWith(prefix)) n += v;
    return n;
  }

  function noteRates(envs) {
    const t = performance.now();
    for (const e of envs) {
      const now = {
        t,
        allowed: sumCounters(e.counters, "allowed."),
        blocked: sumCounters(e.counters, "blocked."),
        would: (e.counters || {})["allowed.report_only"] || 0,
      };
      const prev = state.prev.get(e.name);
      if (prev && t - prev.t > 200) {
        const dt = (t - prev.t) / 1000;
        // A restarted gateway starts again from zero: no negative rates.
        const rate = (k) => Math.max(0, now[k] - prev[k]) / dt;
        state.rates.set(e.name, { allowed: rate("allowed"), blocked: rate("blocked"), would: rate("would") });
      }
      if (!prev || t - prev.t > 200) state.prev.set(e.name, now);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Rendering

  /** Re-render a part only when what it shows changed (keeps focus, clicks and hovers). */
  function changed(part, signature) {
    const s = JSON.stringify(signature);
    if (state.rendered[part] === s) return false;
    state.rendered[part] = s;
    return true;
  }

  function render() {
    const doc = state.doc;
    $("config-version").textContent = "config " + doc.config_sha256.slice(0, 12);
    $("config-version").title = "sha256 " + doc.config_sha256;
    renderExternal(doc);
    renderEnvs(doc);
    renderDetail(env());
    renderAudit();
  }

  function renderExternal(doc) {
    const node = $("banner-external");
    if (doc.management !== "external") {
      show(node, false);
      return;
    }
    const text = doc.management_message ||
      "this gateway's config is managed externally (management: external): change it at its source";
    node.replaceChildren(
      el("strong", {}, "Read-only: this list is managed externally. "),
      text.charAt(0).toUpperCase() + text.slice(1) + ".",
    );
    show(node, true);
  }

  function enforcementBadge(mode) {
    const label = { enforce: "enforce", report: "report only", off: "off" }[mode] || mode;
    const title = {
      enforce: "unknown hosts are refused",
      report: "unknown hosts pass and are counted as would-block",
      off: "the feature is disabled: unknown hosts pass",
    }[mode];
    return badge(label, "mode-" + (mode in { enforce: 1, report: 1, off: 1 } ? mode : "other"), title);
  }

  function lockBadge() {
    return badge("locked", "locked", "not changeable through the admin API or this console");
  }

  function renderEnvs(doc) {
    const body = clearBody($("envs"));
    if (!doc.environments.length) emptyRow(body, 6, "No environments.");
    for (const e of doc.environments) {
      const r = state.rates.get(e.name);
      const allowedTotal = sumCounters(e.counters, "allowed.");
      const blockedTotal = sumCounters(e.counters, "blocked.");
      const blockedCell = el("td", { className: "num", title: `${blockedTotal} refused in total` },
        fmtRate(r && r.blocked));
      if (e.enforcement === "report") {
        blockedCell.append(el("div", { className: "muted small" }, `${fmtRate(r && r.would)} would block`));
      }
      const row = el("tr", {
        className: e.name === state.selected ? "selected" : "",
        dataset: { env: e.name },
      },
      el("td", {},
        el("a", { href: "#env=" + encodeURIComponent(e.name), className: "env-link" }, e.name),
        e.locked ? [" ", lockBadge()] : []),
      el("td", { className: "mono" }, e.hostname),
      el("td", {}, enforcementBadge(e.enforcement)),
      el("td", { className: "num" }, String(e.secure_endpoints.length)),
      el("td", { className: "num", title: `${allowedTotal} allowed in total` }, fmtRate(r && r.allowed)),
      blockedCell);
      body.append(row);
    }
  }

  function renderDetail(e) {
    show($("env-detail"), Boolean(e));
    if (!e) return;
    const why = readOnlyReason(e);
    if (changed("title", [e.name, e.hostname, e.enforcement, e.locked, why])) {
      $("env-name").textContent = e.name;
      $("env-hostname").textContent = e.hostname;
      $("env-badges").replaceChildren(enforcementBadge(e.enforcement), ...(e.locked ? [lockBadge()] : []));
      const notes = {
        external: "Read-only: the config is managed externally (see above).",
        viewer: `Read-only: you are signed in as ${state.who.name}, a viewer. Changes need an admin token.`,
        locked: "Locked: this environment's list cannot be changed through the admin API or " +
          "this console (like LifeTime on the product page). Its owner edits the config file.",
      };
      setBanner($("readonly-note"), notes[why] || "");
      $("readonly-note").className = "note note-" + (why || "none");
      const formWasShown = !$("add-form").hidden;
      show($("add-form"), !why);
      if (formWasShown && why) $("add-host").value = "";
    }
    renderEndpoints(e, why);
    renderBlocked(e, why);
    renderCandidate(e);
  }

  function renderEndpoints(e, why) {
    $("endpoints-count").textContent =
      `${e.secure_endpoints.length} ${e.secure_endpoints.length === 1 ? "entry" : "entries"} + hostname`;
    if (!changed("endpoints", [e.name, e.hostname, e.secure_endpoints, why])) return;
    const body = clearBody($("endpoints"));
    body.append(el("tr", { className: "hostname-row" },
      el("td", { className: "mono host" }, e.hostname),
      el("td", {}, "environment hostname"),
      el("td", { className: "actions muted small" }, "always allowed")));
    for (const host of e.secure_endpoints) {
      const action = why ? "" : el("button", {
        type: "button",
        className: "btn btn-small btn-danger",
        "aria-label": "Remove " + host,
        onClick: () => removeEndpoint(e.name, host),
      }, "Remove");
      body.append(el("tr", { dataset: { host } },
        el("td", { className: "mono host" }, host),
        el("td", {}, entryKind(host)),
        el("td", { className: "actions" }, action)));
    }
    if (!e.secure_endpoints.length) {
      emptyRow(body, 3, "No additional endpoints: only the hostname gets in.");
    }
  }

  /** Whether a blocked-hosts row may be offered for "allow", and if not, why. */
  function allowability(row, e) {
    if (row.truncated) return { ok: false, why: "truncated" };
    if (!ALLOWABLE_REASONS.has(row.reason)) return { ok: false, why: "" };
    const p = parseEntryLike(row.host);
    if (!p) return { ok: false, why: "not a valid entry" };
    const have = new Set([e.hostname, ...e.secure_endpoints].map(normalisedEntry));
    if (have.has(normalisedEntry(row.host))) return { ok: false, why: "allowed now", allowed: true };
    return { ok: true, why: "" };
  }

  function renderBlocked(e, why) {
    const rows = state.blocked;
    if (!changed("blocked", [e.name, e.hostname, e.secure_endpoints, why, rows])) return;
    const body = clearBody($("blocked"));
    if (!rows.length) emptyRow(body, 5, "Nothing refused since the gateway started (or the table was reset).");
    for (const row of rows) {
      const verdict = allowability(row, e);
      let action = verdict.why ? el("span", { className: verdict.allowed ? "badge badge-ok" : "muted small" }, verdict.why) : "";
      if (verdict.ok && !why) {
        action = el("button", {
          type: "button",
          className: "btn btn-small",
          "aria-label": "Allow " + row.host,
          onClick: () => allowHost(e.name, row.host),
        }, "Allow");
      }
      // A long value (a flood, an attack) is cut for display; the tooltip has all of it.
      const shown = row.host.length > SHOW_CHARS ? row.host.slice(0, SHOW_CHARS) + "…" : row.host;
      const hostCell = el("td", { className: "mono host", title: row.host }, shown);
      if (row.truncated) hostCell.append(" ", badge("truncated", "warn", "longer than 256 characters; stored cut"));
      const count = row.error ? `≤ ${row.count}` : String(row.count);
      body.append(el("tr", { dataset: { host: row.host } },
        hostCell,
        el("td", {}, badge(String(row.reason).replace(/_/g, " "), row.reason === "would_block" ? "warn" : "bad"),
          row.unclaimed ? " " : "",
          row.unclaimed ? badge("no environment", "warn", "refused before any environment claimed it (a listener without a default environment)") : ""),
        el("td", { className: "num", title: row.error ? `possible overestimate ${row.error}` : "" }, count),
        el("td", { className: "nowrap", title: `first seen ${fmtTime(row.first_seen)}` }, fmtTime(row.last_seen)),
        el("td", { className: "actions" }, action)));
    }
  }

  function renderCandidate(e) {
    const card = $("candidate-card");
    show(card, e.candidate_endpoints !== null && e.candidate_endpoints !== undefined);
    if (card.hidden) return;
    const d = e.candidate_disagreements || {};
    $("dis-blocked").textContent = String(d.newly_blocked || 0);
    $("dis-allowed").textContent = String(d.newly_allowed || 0);
    if (!changed("candidate", [e.name, e.secure_endpoints, e.candidate_endpoints])) return;
    const live = new Set(e.secure_endpoints);
    const cand = new Set(e.candidate_endpoints);
    const body = clearBody($("candidate"));
    const all = [...new Set([...e.candidate_endpoints, ...e.secure_endpoints])].sort();
    for (const host of all) {
      const inLive = live.has(host);
      const inCand = cand.has(host);
      body.append(el("tr", { className: inLive && inCand ? "" : "differs", dataset: { host } },
        el("td", { className: "mono host" }, host),
        el("td", {}, inLive ? "allowed" : badge("not listed", "warn")),
        el("td", {}, inCand ? (inLive ? "allowed" : badge("added", "ok")) : badge("removed", "bad"))));
    }
    if (!all.length) emptyRow(body, 3, "Both lists are empty: only the hostname gets in.");
  }

  function renderAudit() {
    if (!changed("audit", state.audit)) return;
    const body = clearBody($("audit"));
    const records = [...state.audit].reverse();
    if (!records.length) emptyRow(body, 6, "No changes recorded yet.");
    for (const r of records) {
      if (r.unparsable !== undefined) {
        body.append(el("tr", {}, el("td", { colspan: 6, className: "mono" }, "unparsable line: " + r.unparsable)));
        continue;
      }
      const values = Array.isArray(r.values) ? r.values.join(", ") : r.values === undefined ? "" : JSON.stringify(r.values);
      const before = String(r.sha256_before || "").slice(0, 8);
      const after = String(r.sha256_after || "").slice(0, 8);
      body.append(el("tr", {},
        el("td", { className: "nowrap", title: r.time || "" }, fmtTime(r.time)),
        el("td", {}, r.token || "", r.role ? [" ", el("span", { className: "muted small" }, r.role)] : []),
        el("td", {}, r.environment === null || r.environment === undefined ? "all" : r.environment),
        el("td", {}, String(r.action || "").replace(/_/g, " ")),
        el("td", { className: "mono values" }, values),
        el("td", { className: "mono muted small" }, before === after ? before : `${before} → ${after}`)));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Confirmation (an in-page dialog: no window.confirm, nothing inline for the CSP)

  let resolveConfirm = null;

  function confirmDialog({ title, text, warnings, ok, danger }) {
    const dlg = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").replaceChildren(...(Array.isArray(text) ? text : [text]).map((t) =>
      t instanceof Node ? t : document.createTextNode(String(t))));
    const list = $("confirm-warnings");
    list.replaceChildren(...(warnings || []).map((w) => el("li", {}, w)));
    show(list, Boolean(warnings && warnings.length));
    $("confirm-ok").textContent = ok;
    $("confirm-ok").className = "btn " + (danger ? "btn-danger" : "btn-primary");
    return new Promise((resolve) => {
      resolveConfirm = resolve;
      dlg.showModal();
      $("confirm-cancel").focus();
    });
  }

  function closeConfirm(answer) {
    const dlg = $("confirm");
    if (dlg.open) dlg.close();
    if (resolveConfirm) {
      const r = resolveConfirm;
      resolveConfirm = null;
      r(answer);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Changes

  function liveNote(result) {
    return result && result.config_sha256 ? ` The gateway serves it now (config ${result.config_sha256.slice(0, 12)}).` : "";
  }

  async function addEndpoint(event) {
    event.preventDefault();
    const e = env();
    const value = $("add-host").value.trim();
    if (!e || !value) return;
    const warnings = warningsFor(value, e);
    if (warnings.length) {
      const ok = await confirmDialog({
        title: `Add ${value} to ${e.name}?`,
        text: ["Requests with this Host will be let through to ", el("span", { className: "mono" }, e.name),
          "." + portNote(value)],
        warnings,
        ok: "Add endpoint",
      });
      if (!ok) return;
    }
    await write($("endpoints-msg"), "POST", `${API}/environments/${encodeURIComponent(e.name)}/endpoints`, { host: value },
      (r) => {
        $("add-host").value = "";
        return r.changed ? `Added ${value}.${liveNote(r)}` : `${value} was already allowed: nothing changed.`;
      });
  }

  async function removeEndpoint(name, host) {
    const e = env();
    const refusedHow = e && e.enforcement === "enforce" ? "will be refused"
      : "will count as would-block (enforcement is " + (e ? e.enforcement : "?") + ")";
    const ok = await confirmDialog({
      title: `Remove ${host} from ${name}?`,
      text: `Requests with this Host ${refusedHow} unless another entry covers them.`,
      ok: "Remove",
      danger: true,
    });
    if (!ok) return;
    await write($("endpoints-msg"), "DELETE",
      `${API}/environments/${encodeURIComponent(name)}/endpoints/${encodeURIComponent(host)}`, undefined,
      (r) => (r.changed ? `Removed ${host}.${liveNote(r)}` : `${host} was not in the list: nothing changed.`));
  }

  async function allowHost(name, host) {
    const e = env();
    if (!e) return;
    const warnings = warningsFor(host, e);
    const ok = await confirmDialog({
      title: `Allow ${host} in ${name}?`,
      text: `It is added to ${name}'s secure endpoints, and requests with this Host are let through from now on.` +
        portNote(host),
      warnings,
      ok: "Allow",
    });
    if (!ok) return;
    await write($("blocked-msg"), "POST", `${API}/environments/${encodeURIComponent(name)}/endpoints`, { host },
      (r) => (r.changed ? `Allowed ${host}.${liveNote(r)}` : `${host} was already allowed: nothing changed.`));
  }

  async function write(msgNode, method, path, body, success) {
    setMessage(msgNode, "Saving…", "ok");
    try {
      const result = await api(method, path, body);
      setMessage(msgNode, success(result), "ok");
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        signOut("Signed out: the gateway no longer accepts this token (" + describe(e) + ").");
        return;
      }
      setMessage(msgNode, describe(e), "error");
    }
    await refresh();
  }

  // ---------------------------------------------------------------------------------------
  // Wiring

  function init() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("continue-anonymous").addEventListener("click", continueAnonymous);
    $("add-form").addEventListener("submit", addEndpoint);
    $("confirm-ok").addEventListener("click", () => closeConfirm(true));
    $("confirm-cancel").addEventListener("click", () => closeConfirm(false));
    $("confirm").addEventListener("close", () => closeConfirm(false));
    window.addEventListener("hashchange", () => {
      setMessage($("endpoints-msg"), "");
      setMessage($("blocked-msg"), "");
      refresh();
    });
    state.token = sessionStorage.getItem(TOKEN_KEY);
    if (!state.token) {
      showSignin("");
      return;
    }
    api("GET", API + "/whoami").then(enter, (e) => {
      if (e instanceof ApiError && e.status === 401) {
        signOut("Signed out: the gateway no longer accepts this token (" + describe(e) + ").");
      } else {
        sessionStorage.removeItem(TOKEN_KEY);
        state.token = null;
        showSignin("Could not reach the admin API: " + describe(e));
      }
    });
  }

  init();
})();
