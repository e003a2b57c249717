// The console's one script: live updates through one EventSource, a confirmation
// before End, and the CSRF token filled into forms. No inline script anywhere (the
// Content-Security-Policy forbids it); nothing is loaded from another origin.
"use strict";
(function () {
  const meta = (name) => {
    const el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.content : null;
  };

  document.addEventListener("submit", (event) => {
    const form = event.target;
    const question = form.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    const csrf = form.querySelector('input[name="csrf"]');
    if (csrf && !csrf.value) csrf.value = meta("csrf") || "";
  });

  const version = meta("console-version");
  const live = document.getElementById("live");
  if (version === null || !live || !window.EventSource) return;
  const dot = document.getElementById("live-dot");

  // One fetch of the page's live part at a time (when it is too big for the stream).
  let fetching = false;
  let again = false;
  async function refresh() {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    try {
      const response = await fetch(window.location.href, {
        headers: { "X-Console-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual",
      });
      if (response.type === "opaqueredirect" || response.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (response.status === 503) {
        window.location.reload();
        return;
      }
      if (response.ok) {
        live.innerHTML = await response.text();
        document.body.dataset.updated = String(Date.now());
      }
    } catch (error) {
      // The stream reconnects by itself and sends the live part anew.
    } finally {
      fetching = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  // The stream carries the page's live part itself, once per change that concerns
  // it; a part too big for the stream is fetched instead.
  const page = window.location.pathname + window.location.search;
  const source = new EventSource(
    "/console/events?v=" + encodeURIComponent(version) + "&page=" + encodeURIComponent(page),
  );
  source.addEventListener("fragment", (event) => {
    live.innerHTML = event.data;
    document.body.dataset.updated = String(Date.now());
  });
  source.addEventListener("refresh", () => refresh());
  source.addEventListener("reload", () => window.location.reload());
  source.addEventListener("standby", () => window.location.reload());
  source.addEventListener("open", () => {
    if (dot) dot.classList.add("on");
  });
  source.addEventListener("error", () => {
    if (dot) dot.classList.remove("on");
  });
})();
