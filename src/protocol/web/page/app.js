// Switchboard's web page: one WebSocket to /ws, JSON messages (docs/PROTOCOLS.md, "WEB").
// Everything shown is set with textContent: a message is text, never markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const nameInput = $("name");
  const status = $("status");
  const messages = $("messages");
  const present = $("present");
  const toInput = $("to");
  const textInput = $("text");

  let socket = null;
  // The name asked for, and the one the server accepted (signed in again with after a drop).
  let wanted = "";
  let signedIn = "";
  let backoffMs = 500;
  let nextId = 1;
  let keepalive = null;

  function setStatus(text, state) {
    status.textContent = text;
    status.dataset.state = state;
  }

  function addMessage(kind, from, protocol, text) {
    const item = document.createElement("li");
    item.className = "msg";
    item.dataset.kind = kind;
    item.dataset.from = from;
    item.dataset.protocol = protocol;
    if (kind !== "notice") {
      const who = document.createElement("span");
      who.className = "from";
      who.textContent = from;
      const via = document.createElement("span");
      via.className = "protocol";
      via.textContent = kind === "direct" ? protocol + ", direct" : protocol;
      item.append(who, via);
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    item.append(body);
    const atBottom = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 4;
    messages.append(item);
    if (atBottom) messages.scrollTop = messages.scrollHeight;
  }

  function notice(text) {
    addMessage("notice", "", "", text);
  }

  function addPresent(name, protocol) {
    const item = document.createElement("li");
    item.dataset.name = name;
    item.dataset.protocol = protocol;
    const who = document.createElement("span");
    who.textContent = name;
    const via = document.createElement("span");
    via.className = "protocol";
    via.textContent = protocol;
    item.append(who, via);
    present.append(item);
  }

  function removePresent(name, protocol) {
    for (const item of present.children) {
      if (item.dataset.name === name && item.dataset.protocol === protocol) {
        item.remove();
        return;
      }
    }
  }

  function send(object) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(object));
      return true;
    }
    return false;
  }

  function onMessage(event) {
    let m;
    try {
      m = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    switch (m.type) {
      case "welcome":
        signedIn = m.name;
        setStatus("connected as " + m.name, "connected");
        present.replaceChildren();
        for (const member of m.present || []) addPresent(member.name, member.protocol);
        break;
      case "refused":
        setStatus(m.reason, "refused");
        break;
      case "lobby":
        addMessage("lobby", m.from, m.protocol, m.text);
        break;
      case "direct":
        addMessage("direct", m.from, m.protocol, m.text);
        break;
      case "joined":
        addPresent(m.name, m.protocol);
        notice(m.name + " (" + m.protocol + ") joined");
        break;
      case "left":
        removePresent(m.name, m.protocol);
        notice(m.name + " (" + m.protocol + ") left");
        break;
      case "sent":
        if (m.status !== "delivered") notice("message " + m.status);
        break;
      case "error":
        // no-receipt: sent to another node, whose receipt never came; it may have arrived.
        if (m.reason === "no-receipt") notice("no receipt: the message may or may not have arrived");
        else notice("not sent: " + m.reason);
        break;
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws");
    socket.addEventListener("open", () => {
      backoffMs = 500;
      const name = signedIn || wanted;
      if (name) {
        send({ type: "signin", name: name });
      } else {
        setStatus("not signed in", "open");
      }
      clearInterval(keepalive);
      keepalive = setInterval(() => send({ type: "ping" }), 25000);
    });
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", () => {
      clearInterval(keepalive);
      socket = null;
      present.replaceChildren();
      setStatus("reconnecting", "reconnecting");
      setTimeout(connect, backoffMs);
      backoffMs = Math.min(backoffMs * 2, 8000);
    });
  }

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    wanted = nameInput.value.trim();
    if (!wanted || signedIn) return;
    send({ type: "signin", name: wanted });
  });

  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textInput.value;
    if (!text) return;
    const to = toInput.value.trim();
    const message = to
      ? { type: "direct", to: to, text: text, id: nextId++ }
      : { type: "say", text: text };
    if (!send(message)) {
      notice("not connected: not sent");
      return;
    }
    // One's own direct message: a notice (`data-kind="direct"` is for messages received).
    if (to) addMessage("notice", signedIn, "web", "\u2192 " + to + ": " + text);
    textInput.value = "";
  });

  connect();
})();
