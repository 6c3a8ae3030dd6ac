// The memory browser's only script: keyboard shortcuts, a confirmation before a delete, and the
// forget button enabled once the confirmation is typed. Every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // A delete asks first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  // Forget: the button waits for the exact text (the server checks it again).
  for (const form of document.querySelectorAll("form[data-typed-confirm]")) {
    const expected = form.querySelector("[data-expected]").textContent.trim();
    const typed = form.querySelector("input[name=typed]");
    const button = form.querySelector("button[type=submit]");
    const sync = () => { button.disabled = typed.value.trim() !== expected; };
    typed.addEventListener("input", sync);
    sync();
  }

  // "/" focuses the search box; "g" then s / t / g opens search, timeline, stats.
  let pending = false;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    if (event.key === "/") {
      const box = document.querySelector("[data-focus-key='/']");
      if (box) { event.preventDefault(); box.focus(); box.select(); }
      else {
        const link = document.querySelector("a[data-key='s']");
        if (link) { event.preventDefault(); window.location.assign(link.href); }
      }
      return;
    }
    if (pending) {
      pending = false;
      const link = document.querySelector(`a[data-key='${event.key}']`);
      if (link) { event.preventDefault(); window.location.assign(link.href); }
      return;
    }
    if (event.key === "g") pending = true;
  });
});
