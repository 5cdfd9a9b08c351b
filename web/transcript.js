// The live transcript: one bubble per conversation item, partial (grey) until its final text arrives.

export class Transcript {
  constructor(root) {
    this.root = root;
    this.bubbles = new Map(); // item id -> { el, text, role }
  }

  bubble(itemId, role) {
    let b = this.bubbles.get(itemId);
    if (!b) {
      const el = document.createElement("div");
      el.className = `msg ${role} partial`;
      el.dataset.itemId = itemId;
      el.dataset.role = role;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "user" ? "you" : "assistant";
      const text = document.createElement("span");
      text.className = "text";
      el.append(who, text);
      this.root.append(el);
      b = { el, text, role };
      this.bubbles.set(itemId, b);
    }
    return b;
  }

  /** The user started speaking: a placeholder until the transcript arrives. */
  userStarted(itemId) {
    const b = this.bubble(itemId, "user");
    if (!b.text.textContent) b.text.textContent = "…";
    this.scroll();
  }

  append(itemId, role, delta) {
    const b = this.bubble(itemId, role);
    b.text.textContent = (b.text.textContent === "…" ? "" : b.text.textContent) + delta;
    this.scroll();
  }

  finish(itemId, role, text) {
    const b = this.bubble(itemId, role);
    if (typeof text === "string") b.text.textContent = text || "(nothing heard)";
    b.el.classList.remove("partial");
    this.scroll();
  }

  interrupted(itemId) {
    const b = this.bubbles.get(itemId);
    if (b) b.el.classList.add("interrupted");
  }

  drop(itemId) {
    const b = this.bubbles.get(itemId);
    if (b && (b.text.textContent === "…" || !b.text.textContent)) {
      b.el.remove();
      this.bubbles.delete(itemId);
    }
  }

  note(itemId, text) {
    const b = this.bubbles.get(itemId);
    if (!b) return;
    let el = b.el.querySelector(".turn-latency");
    if (!el) {
      el = document.createElement("span");
      el.className = "turn-latency";
      b.el.append(el);
    }
    el.textContent = text;
  }

  /** What the page shows, for tests and debugging. */
  entries() {
    return [...this.bubbles.entries()].map(([id, b]) => ({
      id, role: b.role, text: b.text.textContent, final: !b.el.classList.contains("partial"),
      interrupted: b.el.classList.contains("interrupted"),
    }));
  }

  scroll() {
    this.root.scrollTop = this.root.scrollHeight;
  }
}
