/* Chirp's page script. Optional by design: without it every page works through plain links
   and forms; with it htmx makes them smooth and the home timeline goes live. */
(function () {
  "use strict";

  var MAX_LENGTH = 280;
  var TOP_SLACK = 60; // px: closer than this to the top counts as "at the top"

  function csrf() {
    return document.body.dataset.csrf || "";
  }

  // -- toast: one short message at a time, read out by screen readers (role=alert) -----------

  var toastTimer = null;

  function toast(message) {
    var box = document.getElementById("toast");
    if (!box) return;
    box.replaceChildren();
    var p = document.createElement("p");
    p.textContent = message;
    box.append(p);
    armToast();
  }

  function armToast() {
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      var box = document.getElementById("toast");
      if (box) box.replaceChildren();
    }, 6000);
  }

  function errorText(xhr) {
    var type = xhr.getResponseHeader("Content-Type") || "";
    try {
      if (type.indexOf("json") >= 0) return JSON.parse(xhr.responseText).detail;
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var text = (doc.body.textContent || "").trim();
      if (text) return text;
    } catch (ignored) {
      /* fall through to the generic message */
    }
    return "Something went wrong. Please try again.";
  }

  // Errors never land in the element that asked: they go to the toast, as text.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status < 400) return;
    event.detail.shouldSwap = false;
    toast(errorText(xhr));
  });

  document.addEventListener("htmx:sendError", function () {
    toast("Can’t reach Chirp right now. Check your connection and try again.");
  });

  // -- compose: a counter that counts exactly as the server does -------------------------------

  // The server's rule (domain/rules.py): NFC-normalised, trimmed, counted in code points.
  function tweetLength(text) {
    return Array.from(text.normalize("NFC").trim()).length;
  }

  function updateCompose(form) {
    var area = form.querySelector("textarea[name=text]");
    var count = form.querySelector("[data-count]");
    var submit = form.querySelector("button[type=submit]");
    if (!area || !count || !submit) return;
    var used = tweetLength(area.value);
    var left = MAX_LENGTH - used;
    count.textContent = String(left);
    count.parentElement.classList.toggle("warn", left >= 0 && left <= 20);
    count.parentElement.classList.toggle("over", left < 0);
    area.setAttribute("aria-invalid", left < 0 ? "true" : "false");
    var uploading = form.querySelector(".attachments .uploading") !== null;
    submit.disabled = used === 0 || left < 0 || uploading;
  }

  function newKey() {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, function (b) {
      return b.toString(16).padStart(2, "0");
    }).join("");
  }

  function resetCompose(form) {
    form.reset();
    // The next tweet is a new post, not a retry of this one.
    var key = form.querySelector("[data-idempotency-key]");
    if (key) key.value = newKey();
    var list = form.querySelector("[data-attachments]");
    if (list) {
      list.replaceChildren();
      list.hidden = true;
    }
    updateCompose(form);
  }

  document.addEventListener("input", function (event) {
    var form = event.target.closest && event.target.closest("form[data-compose]");
    if (form && event.target.name === "text") updateCompose(form);
  });

  document.addEventListener("keydown", function (event) {
    // Ctrl/Cmd+Enter posts, as in most social apps.
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    var form = event.target.closest && event.target.closest("form[data-compose]");
    var submit = form && form.querySelector("button[type=submit]");
    if (submit && !submit.disabled) form.requestSubmit();
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt;
    if (form.matches && form.matches("form[data-compose]") && event.detail.successful) {
      resetCompose(form);
    }
  });

  // -- images: uploaded straight to the store through the JSON API, then posted by id ----------

  function sameOrigin(url) {
    return new URL(url, location.href).origin === location.origin;
  }

  function attach(form, files) {
    var list = form.querySelector("[data-attachments]");
    var room = 4 - list.children.length;
    Array.from(files)
      .slice(0, Math.max(room, 0))
      .forEach(function (file) {
        var item = document.createElement("li");
        item.className = "uploading";
        var image = document.createElement("img");
        image.alt = "Attached image " + file.name;
        image.src = URL.createObjectURL(file);
        var remove = document.createElement("button");
        remove.type = "button";
        remove.setAttribute("aria-label", "Remove image " + file.name);
        remove.textContent = "×";
        remove.addEventListener("click", function () {
          item.remove();
          list.hidden = list.children.length === 0;
          updateCompose(form);
        });
        item.append(image, remove);
        list.append(item);
        list.hidden = false;
        updateCompose(form);
        upload(file)
          .then(function (mediaId) {
            var input = document.createElement("input");
            input.type = "hidden";
            input.name = "media_ids";
            input.value = mediaId;
            // Alt text for screen readers, sent with the tweet as alt_<media id>.
            var alt = document.createElement("input");
            alt.type = "text";
            alt.name = "alt_" + mediaId;
            alt.maxLength = 1000;
            alt.placeholder = "Describe this image";
            alt.className = "alt-text";
            alt.setAttribute("aria-label", "Alt text for image " + file.name);
            item.append(input, alt);
            item.classList.remove("uploading");
          })
          .catch(function (error) {
            item.remove();
            list.hidden = list.children.length === 0;
            toast(error.message || "That image could not be attached.");
          })
          .finally(function () {
            updateCompose(form);
          });
      });
    if (files.length > room) toast("A tweet can carry up to 4 images.");
  }

  function upload(file) {
    return fetch("/api/v1/media", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify({ content_type: file.type, size: file.size }),
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(body.detail || "That image could not be attached.");
          return body;
        });
      })
      .then(function (body) {
        var headers = Object.assign({}, body.upload.headers);
        // The app's own store sees the session cookie, so it needs the CSRF header too.
        if (sameOrigin(body.upload.url)) headers["X-CSRF-Token"] = csrf();
        return fetch(body.upload.url, {
          method: body.upload.method || "PUT",
          headers: headers,
          body: file,
        }).then(function (response) {
          if (!response.ok) throw new Error("The image upload failed. Please try again.");
          return body.media_id;
        });
      });
  }

  document.addEventListener("change", function (event) {
    if (!event.target.matches || !event.target.matches("input[data-file]")) return;
    var form = event.target.closest("form[data-compose]");
    if (form && event.target.files.length) attach(form, event.target.files);
    event.target.value = "";
  });

  // -- live timeline ---------------------------------------------------------------------------

  function liveRoot() {
    return document.querySelector("[data-live]");
  }

  // The newest tweet on the page: a reconnect asks for everything after it (no gap), and
  // anything already shown is dropped on arrival (no duplicate).
  function newestId() {
    var root = liveRoot();
    if (!root) return null;
    var best = root.dataset.sinceId ? BigInt(root.dataset.sinceId) : null;
    root.querySelectorAll("#timeline > article[data-id], #pending > article[data-id]").forEach(
      function (article) {
        var id = BigInt(article.dataset.id);
        if (best === null || id > best) best = id;
      }
    );
    return best === null ? null : best.toString();
  }

  function isDuplicate(article) {
    var twins = document.querySelectorAll('[id="' + article.id + '"]');
    return twins.length > 1;
  }

  function announce(text) {
    var status = document.getElementById("live-status");
    if (status) status.textContent = text;
  }

  function plural(n) {
    return n === 1 ? "1 new tweet" : n + " new tweets";
  }

  function reveal(moveFocus) {
    var pending = document.getElementById("pending");
    var timeline = document.getElementById("timeline");
    var bar = document.getElementById("new-bar");
    if (!pending || !timeline) return;
    var items = Array.from(pending.children);
    items.forEach(function (item) {
      item.classList.add("fresh");
    });
    timeline.prepend.apply(timeline, items);
    if (bar) bar.hidden = true;
    if (moveFocus && items.length) {
      window.scrollTo({ top: 0, behavior: "smooth" });
      items[0].setAttribute("tabindex", "-1");
      items[0].focus({ preventScroll: true });
    }
  }

  function settleLive() {
    var pending = document.getElementById("pending");
    var bar = document.getElementById("new-bar");
    if (!pending || !bar) return;
    Array.from(pending.children).forEach(function (item) {
      if (isDuplicate(item)) item.remove();
    });
    var count = pending.children.length;
    if (count === 0) {
      bar.hidden = true;
      return;
    }
    if (bar.hidden && window.scrollY < TOP_SLACK) {
      // At the top nothing is being read below: show them in place.
      reveal(false);
      announce(plural(count));
      return;
    }
    bar.querySelector("[data-new-label]").textContent = "Show " + plural(count);
    if (bar.hidden || bar.dataset.count !== String(count)) announce(plural(count));
    bar.dataset.count = String(count);
    bar.hidden = false;
  }

  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("#new-bar")) reveal(true);
  });

  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    // A deletion of a tweet this page never showed: nothing to do (and no htmx error).
    var gone = /^<div id="(tweet-\d+)" hx-swap-oob="delete">/.exec(event.detail.message);
    if (gone && !document.getElementById(gone[1])) event.preventDefault();
  });

  document.addEventListener("htmx:wsAfterMessage", settleLive);

  // The socket's state, for styling (and for tests, which wait for "open").
  document.addEventListener("htmx:wsOpen", function (event) {
    event.target.dataset.socket = "open";
  });
  document.addEventListener("htmx:wsClose", function (event) {
    event.target.dataset.socket = "closed";
  });

  // A tweet can arrive twice: from the compose answer and from the socket.
  document.addEventListener("htmx:load", function (event) {
    var elt = event.detail.elt;
    if (elt.matches && elt.matches("article.tweet") && isDuplicate(elt)) elt.remove();
  });

  // -- ages ("5m") stay true while the page is open ------------------------------------------

  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  // The same rule as the server's `ago` filter (web/templating.py).
  function ago(moment, now) {
    var seconds = Math.floor((now - moment) / 1000);
    if (seconds < 60) return Math.max(seconds, 0) + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m";
    if (seconds < 86400) return Math.floor(seconds / 3600) + "h";
    var date = MONTHS[moment.getUTCMonth()] + " " + moment.getUTCDate();
    return moment.getUTCFullYear() === now.getUTCFullYear()
      ? date
      : date + ", " + moment.getUTCFullYear();
  }

  function refreshAges() {
    var now = new Date();
    document.querySelectorAll("a.when time[datetime]").forEach(function (time) {
      time.textContent = ago(new Date(time.getAttribute("datetime")), now);
    });
  }

  function init() {
    setInterval(refreshAges, 30000);
    document.querySelectorAll("form[data-compose]").forEach(function (form) {
      var picker = form.querySelector("[data-attach]");
      if (picker && window.fetch) picker.hidden = false;
      updateCompose(form);
    });
    if (window.htmx) {
      // The ws extension calls this for every (re)connection: carry the resume point.
      htmx.createWebSocket = function (url) {
        var target = new URL(url, location.href);
        var since = newestId();
        if (since) target.searchParams.set("since_id", since);
        return new WebSocket(target.toString());
      };
    }
  }

  init();
})();
