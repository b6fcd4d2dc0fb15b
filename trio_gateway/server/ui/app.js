// The gateway's control page. It speaks only the WebSocket control protocol
// (docs/control-protocol.md) on /ws, with the secret the user typed, kept in sessionStorage
// (this tab only). Everything a model, a tool or a session holds is untrusted: it reaches the
// page as text nodes only (nothing here parses text as HTML), and the server's Content-Security-Policy
// forbids inline scripts besides.

const SECRET_KEY = "epiloop.secret";
const PROTOCOL = 1;
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000];
const LIVE_POLL_MS = 1000;

// -- small DOM helpers (text only) ---------------------------------------------------------

const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "data") Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ago(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(unixSeconds * 1000).toLocaleString();
}

function seconds(value) {
  if (value < 60) return `${value.toFixed(1)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.floor(value % 60)} s`;
  return `${Math.floor(value / 3600)} h ${Math.floor((value % 3600) / 60)} min`;
}

// -- the control-plane client ----------------------------------------------------------------

class ProtocolError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

class Gateway {
  constructor() {
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // request id -> {resolve, reject, accepted?}
    this.runs = new Map(); // run id -> listener of its agent events
    this.hello = null;
    this.onstate = () => {};
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  // Open a connection and authenticate; resolves with the connect result.
  open(secret) {
    this.close();
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url());
      this.ws = ws;
      let connected = false;
      ws.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        if (frame.type === "event" && frame.event === "connect.challenge") {
          const auth = secret ? { token: secret, password: secret } : {};
          const params = { minProtocol: PROTOCOL, maxProtocol: PROTOCOL, auth,
            client: { name: "epiloop-control-ui", version: "1" } };
          ws.send(JSON.stringify({ type: "req", id: "connect", method: "connect", params }));
        } else if (frame.type === "res" && frame.id === "connect") {
          if (frame.ok) {
            connected = true;
            this.hello = frame.payload;
            resolve(frame.payload);
          } else {
            reject(new ProtocolError(frame.error.code, frame.error.message));
          }
        } else {
          this.dispatch(frame);
        }
      };
      ws.onclose = (event) => {
        if (this.ws === ws) this.ws = null;
        this.failPending(new ProtocolError("connection_lost", "The connection to the gateway was lost."));
        if (!connected) {
          reject(new ProtocolError(event.code === 4001 ? "auth_failed" : "connection_failed",
            event.code === 4001 ? "Wrong token or password." : "Could not reach the gateway."));
        } else {
          this.onstate("closed", event);
        }
      };
    });
  }

  close() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.close();
      this.failPending(new ProtocolError("connection_closed", "Disconnected."));
    }
  }

  failPending(error) {
    for (const entry of this.pending.values()) entry.reject(error);
    this.pending.clear();
    this.runs.clear();
  }

  send(method, params) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      throw new ProtocolError("not_connected", "Not connected to the gateway.");
    }
    const id = `r${this.nextId++}`;
    this.ws.send(JSON.stringify({ type: "req", id, method, params: params || {} }));
    return id;
  }

  call(method, params) {
    return new Promise((resolve, reject) => {
      const id = this.send(method, params);
      this.pending.set(id, { resolve, reject });
    });
  }

  // Start a run: onAccepted(runId) first, then onEvent(agentEvent) as it streams;
  // resolves with the run's result.
  run(params, onAccepted, onEvent) {
    return new Promise((resolve, reject) => {
      const id = this.send("agent", params);
      this.pending.set(id, {
        resolve, reject,
        accepted: (payload) => {
          this.runs.set(payload.runId, onEvent);
          onAccepted(payload.runId);
        },
      });
    });
  }

  dispatch(frame) {
    if (frame.type === "event") {
      if (frame.event === "agent") {
        const listener = this.runs.get(frame.payload.runId);
        if (listener) listener(frame.payload);
      }
      return;
    }
    const entry = this.pending.get(frame.id);
    if (!entry) return;
    if (!frame.ok) {
      this.pending.delete(frame.id);
      entry.reject(new ProtocolError(frame.error.code, frame.error.message));
      return;
    }
    if (entry.accepted && frame.payload && frame.payload.status === "accepted") {
      entry.accepted(frame.payload);
      entry.accepted = null;
      return;
    }
    this.pending.delete(frame.id);
    if (frame.payload && frame.payload.runId) this.runs.delete(frame.payload.runId);
    entry.resolve(frame.payload);
  }
}

// -- application state -----------------------------------------------------------------------

const gateway = new Gateway();
const state = {
  page: "chat",
  agents: [],
  signedIn: false,
  reconnectAttempt: 0,
  reconnectTimer: null,
  liveTimer: null,
  chatRun: null, // {runId} while a chat run is going
};

function setConnection(text, kind = "") {
  const node = $("connection");
  node.textContent = text;
  node.className = kind;
}

function showError(container, error) {
  container.append(h("p", { class: "error", role: "alert" }, String(error.message || error)));
}

// -- signing in and reconnecting -------------------------------------------------------------

async function signIn(secret) {
  setConnection("Connecting…");
  try {
    await gateway.open(secret);
  } catch (error) {
    setConnection("Not connected", "bad");
    if (error.code === "auth_failed" || error.code === "too_many_auth_failures") {
      sessionStorage.removeItem(SECRET_KEY);
      showSignIn(error.message);
      return false;
    }
    throw error;
  }
  sessionStorage.setItem(SECRET_KEY, secret);
  state.signedIn = true;
  state.reconnectAttempt = 0;
  const server = gateway.hello.server;
  setConnection(`Connected to ${server.name} ${server.version}`, "ok");
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  await loadAgents();
  showPage(pageFromHash());
  return true;
}

function showSignIn(message = "") {
  state.signedIn = false;
  stopLive();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  for (const page of document.querySelectorAll(".page")) page.hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("secret").value = "";
  $("secret").focus();
}

function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  const delay = RECONNECT_DELAYS_MS[Math.min(state.reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
  state.reconnectAttempt += 1;
  setConnection(`Connection lost; reconnecting (attempt ${state.reconnectAttempt})…`, "bad");
  state.reconnectTimer = setTimeout(reconnect, delay);
}

async function reconnect() {
  const secret = sessionStorage.getItem(SECRET_KEY);
  if (secret === null) {
    showSignIn();
    return;
  }
  try {
    if (await signIn(secret)) setConnection(`Reconnected to ${gateway.hello.server.name} ${gateway.hello.server.version}`, "ok");
  } catch {
    scheduleReconnect();
  }
}

gateway.onstate = (what, event) => {
  if (what !== "closed") return;
  finishChatRun();
  stopLive();
  if (event.code === 4001) {
    sessionStorage.removeItem(SECRET_KEY);
    showSignIn("The gateway's credential changed; sign in again.");
    return;
  }
  scheduleReconnect();
};

// -- pages -----------------------------------------------------------------------------------

const PAGES = ["chat", "sessions", "live", "overview"];

function pageFromHash() {
  const name = location.hash.slice(1);
  return PAGES.includes(name) ? name : "chat";
}

function showPage(name) {
  state.page = name;
  for (const page of PAGES) $(`page-${page}`).hidden = page !== name;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  stopLive();
  const load = { chat: loadChat, sessions: loadSessions, live: startLive, overview: loadOverview }[name];
  load().catch((error) => showError($(`page-${name}`), error));
}

async function loadAgents() {
  state.agents = (await gateway.call("agents.list")).agents;
}

// -- chat ------------------------------------------------------------------------------------

function newSessionKey(agentId) {
  const random = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `agent:${agentId.toLowerCase()}:ui:${random}`;
}

async function loadChat() {
  const select = $("chat-agent");
  const chosen = select.value;
  select.replaceChildren(...state.agents.map((agent) =>
    h("option", { value: agent.id }, agent.default ? `${agent.name} (default)` : agent.name)));
  const fallback = state.agents.find((agent) => agent.default) || state.agents[0];
  select.value = state.agents.some((agent) => agent.id === chosen) ? chosen : (fallback ? fallback.id : "");
  await loadChatSessions();
}

async function loadChatSessions(keep = $("chat-session").value) {
  const agentId = $("chat-agent").value;
  const { sessions } = await gateway.call("sessions.list", { agentId, limit: 100 });
  const select = $("chat-session");
  select.replaceChildren(h("option", { value: "" }, "New session"),
    ...sessions.map((session) => h("option", { value: session.key }, session.key)));
  if (keep && !sessions.some((session) => session.key === keep)) {
    select.append(h("option", { value: keep }, keep));
  }
  select.value = keep || "";
}

async function openChatSession() {
  const log = $("chat-log");
  log.replaceChildren();
  const key = $("chat-session").value;
  if (!key) return;
  const session = await gateway.call("sessions.get", { key });
  renderTranscript(log, session.transcript);
}

function bubble(role, status) {
  const text = h("div", { class: "text" });
  const node = h("div", { class: `message ${role}`, data: { status: status || "" } },
    h("div", { class: "role" }, role, status && status !== "completed" ? h("span", { class: `badge ${status}` }, status) : null),
    text);
  return { node, text };
}

function toolBox(name, args) {
  const result = h("pre", { class: "tool-result" });
  const node = h("div", { class: "tool" }, h("div", { class: "role" }, "tool call ", h("code", {}, name)),
    h("pre", { class: "tool-args" }, args), result);
  return { node, result };
}

function renderTranscript(container, transcript) {
  const tools = new Map();
  for (const entry of transcript) {
    if (entry.internal && entry.role === "system") continue;
    if (entry.role === "tool") {
      const box = tools.get(entry.toolCallId);
      if (box) {
        box.result.textContent = entry.content;
        continue;
      }
    }
    const { node, text } = bubble(entry.role, entry.status);
    text.textContent = entry.content;
    container.append(node);
    for (const call of entry.toolCalls || []) {
      const box = toolBox(call.name, call.arguments);
      tools.set(call.id, box);
      container.append(box.node);
    }
  }
}

function setRunning(running) {
  $("chat-send").disabled = running;
  $("chat-stop").disabled = !running;
  $("chat-agent").disabled = running;
  $("chat-session").disabled = running;
}

function finishChatRun() {
  state.chatRun = null;
  setRunning(false);
}

async function sendChat(message) {
  const log = $("chat-log");
  const agentId = $("chat-agent").value;
  let sessionKey = $("chat-session").value;
  if (!sessionKey) {
    sessionKey = newSessionKey(agentId);
    const select = $("chat-session");
    select.append(h("option", { value: sessionKey }, sessionKey));
    select.value = sessionKey;
  }
  log.append(bubble("user").node);
  log.lastChild.querySelector(".text").textContent = message;
  const answer = bubble("assistant");
  log.append(answer.node);
  const tools = new Map();
  state.chatRun = { runId: null };
  setRunning(true);
  const follow = () => { log.scrollTop = log.scrollHeight; };
  try {
    const result = await gateway.run({ message, agentId, sessionKey },
      (runId) => { if (state.chatRun) state.chatRun.runId = runId; },
      (event) => {
        const data = event.data;
        if (event.stream === "assistant") {
          answer.text.append(data.delta);
        } else if (event.stream === "tool" && data.phase === "start") {
          const box = toolBox(data.name, data.arguments);
          tools.set(data.callId, box);
          answer.node.before(box.node);
        } else if (event.stream === "tool" && data.phase === "result") {
          const box = tools.get(data.callId);
          if (box) {
            box.result.textContent = data.result;
            box.node.classList.toggle("failed", !data.ok);
          }
        } else if (event.stream === "lifecycle" && data.phase === "error") {
          showError(log, new Error(data.error.message || data.error.code));
        }
        follow();
      });
    answer.text.textContent = result.text;
    answer.node.dataset.status = result.status;
    if (result.status !== "completed") {
      answer.node.querySelector(".role").append(h("span", { class: `badge ${result.status}` }, result.status));
      if (result.error && result.status !== "aborted") showError(log, new Error(result.error.message || result.error.code));
    }
  } catch (error) {
    answer.node.dataset.status = "failed";
    showError(log, error);
  } finally {
    finishChatRun();
    follow();
  }
}

// -- sessions --------------------------------------------------------------------------------

async function loadSessions() {
  const { sessions } = await gateway.call("sessions.list", { limit: 1000 });
  const body = $("sessions-table").querySelector("tbody");
  body.replaceChildren(...sessions.map((session) => h("tr", { data: { key: session.key } },
    h("td", {}, h("code", {}, session.key)),
    h("td", {}, session.agentId),
    h("td", {}, ago(session.updatedAt)),
    h("td", {}, session.lastStatus),
    h("td", {}, `${session.promptTokens} in / ${session.completionTokens} out`),
    h("td", {}, session.messageCount),
    h("td", { class: "actions" },
      h("button", { type: "button", onclick: () => openSession(session.key).catch((e) => showError($("page-sessions"), e)) }, "Open"),
      h("button", { type: "button", onclick: () => resetSession(session.key).catch((e) => showError($("page-sessions"), e)) }, "Reset"),
      h("button", { type: "button", class: "danger", onclick: () => deleteSession(session.key).catch((e) => showError($("page-sessions"), e)) }, "Delete")))));
  $("sessions-empty").hidden = sessions.length > 0;
}

async function openSession(key) {
  const session = await gateway.call("sessions.get", { key });
  $("session-detail-title").textContent = `${session.key} (${session.agentId}, ${session.lastStatus})`;
  const transcript = $("session-transcript");
  transcript.replaceChildren();
  renderTranscript(transcript, session.transcript);
  if (!session.transcript.length) transcript.append(h("p", {}, "The transcript is empty."));
  $("session-detail").hidden = false;
}

async function resetSession(key) {
  await gateway.call("sessions.reset", { key });
  await loadSessions();
  if (!$("session-detail").hidden) await openSession(key);
}

function confirmDialog(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => () => { dialog.close(); resolve(answer); };
    $("confirm-ok").onclick = done(true);
    $("confirm-cancel").onclick = done(false);
    dialog.oncancel = () => resolve(false);
    dialog.showModal();
  });
}

async function deleteSession(key) {
  if (!(await confirmDialog(`Delete session ${key}? Its transcript is lost.`))) return;
  await gateway.call("sessions.delete", { key });
  $("session-detail").hidden = true;
  await loadSessions();
}

// -- live runs -------------------------------------------------------------------------------

function stopLive() {
  clearTimeout(state.liveTimer);
  state.liveTimer = null;
}

async function startLive() {
  stopLive();
  const tick = async () => {
    try {
      await loadLive();
    } catch (error) {
      if (error.code !== "connection_lost" && error.code !== "not_connected") showError($("page-live"), error);
      return;
    }
    if (state.page === "live" && state.signedIn) state.liveTimer = setTimeout(tick, LIVE_POLL_MS);
  };
  await tick();
}

async function loadLive() {
  const status = await gateway.call("status");
  const admission = status.admission;
  $("live-admission").textContent =
    `${admission.running} running, ${admission.queued} queued, ${admission.waitingForSession} waiting for their session.`;
  const body = $("live-table").querySelector("tbody");
  const hasInstance = status.runs.some((run) => run.instance);
  body.replaceChildren(...status.runs.map((run) => h("tr", { data: { runId: run.runId } },
    h("td", {}, h("code", {}, run.runId)),
    h("td", {}, run.agentId),
    h("td", {}, h("code", {}, run.sessionKey)),
    h("td", {}, hasInstance ? `${run.source} @ ${run.instance || "?"}` : run.source),
    h("td", {}, seconds(run.ageSeconds)),
    h("td", {}, `${run.textChars} chars, ${run.deltas} deltas`),
    h("td", { class: "actions" }, h("button", { type: "button", class: "danger", onclick: (event) => {
      event.target.disabled = true;
      gateway.call("agent.abort", { runId: run.runId }).then(loadLive).catch((e) => showError($("page-live"), e));
    } }, "Abort")))));
  $("live-empty").hidden = status.runs.length > 0;
}

// -- overview --------------------------------------------------------------------------------

async function loadOverview() {
  const [health, status, config] = await Promise.all([
    gateway.call("health"), gateway.call("status"), gateway.call("config.get")]);
  const server = gateway.hello.server;
  const checks = Object.entries(health.checks || {}).map(([name, ok]) => `${name}: ${ok ? "ok" : "failing"}`).join(", ");
  const facts = [
    ["Version", `${server.name} ${server.version} (protocol ${gateway.hello.protocol})`],
    ["Uptime", seconds(health.uptimeSeconds)],
    ["Health", health.ok ? "ok" : "failing"],
    ["Readiness", health.ready === undefined || health.ready === null ? "unknown" : `${health.ready ? "ready" : "not ready"}${checks ? ` (${checks})` : ""}`],
    ["Runs", `${status.admission.running} running, ${status.admission.queued} queued`],
  ];
  $("overview-facts").replaceChildren(...facts.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]));
  await loadAgents();
  $("overview-agents").querySelector("tbody").replaceChildren(...state.agents.map((agent) => h("tr", {},
    h("td", {}, h("code", {}, agent.id)), h("td", {}, agent.name), h("td", {}, h("code", {}, agent.model)),
    h("td", {}, agent.default ? "yes" : ""))));
  const endpoints = config.gateway.http.endpoints;
  const list = [
    ["WebSocket control plane: /ws", true],
    ["OpenAI chat completions: /v1/chat/completions", endpoints.chatCompletions.enabled],
    ["Models: /v1/models", endpoints.chatCompletions.enabled],
    [`Metrics: /metrics${endpoints.metrics.requireAuth ? " (with auth)" : ""}`, endpoints.metrics.enabled],
    ["Health and readiness: /healthz, /readyz", true],
    [`Control UI: ${location.pathname}`, true],
  ];
  $("overview-endpoints").replaceChildren(...list.map(([name, on]) =>
    h("li", { class: on ? "on" : "off" }, `${name}: ${on ? "on" : "off"}`)));
}

// -- wiring ----------------------------------------------------------------------------------

function init() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("sign-in-error").textContent = "";
    signIn($("secret").value).catch((error) => {
      $("sign-in-error").textContent = error.message;
    });
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(SECRET_KEY);
    clearTimeout(state.reconnectTimer);
    gateway.close();
    setConnection("Signed out");
    showSignIn();
  });
  window.addEventListener("hashchange", () => { if (state.signedIn) showPage(pageFromHash()); });
  $("chat-agent").addEventListener("change", () => {
    $("chat-session").value = "";
    loadChatSessions("").then(openChatSession).catch((error) => showError($("chat-log"), error));
  });
  $("chat-session").addEventListener("change", () => {
    openChatSession().catch((error) => showError($("chat-log"), error));
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-input");
    const message = input.value.trim();
    if (!message || state.chatRun) return;
    input.value = "";
    sendChat(message);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => {
    const run = state.chatRun;
    if (!run || !run.runId) return;
    gateway.call("agent.abort", { runId: run.runId }).catch((error) => showError($("chat-log"), error));
  });
  $("sessions-refresh").addEventListener("click", () => loadSessions().catch((e) => showError($("page-sessions"), e)));

  const secret = sessionStorage.getItem(SECRET_KEY);
  if (secret === null) {
    showSignIn();
  } else {
    signIn(secret).catch(() => scheduleReconnect());
  }
}

init();
