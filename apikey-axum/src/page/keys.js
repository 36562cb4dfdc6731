// The self-service keys page. Data is written with textContent only, never
// as HTML. Every state-changing call carries the CSRF header; URLs are
// relative to the page, so the router may be nested under any path.
"use strict";

(function () {
  const api = "v1/api-keys";
  let config = { title: "", scopes: [], prefixes: [], csrf_header: "x-apikey-csrf" };
  let pendingDelete = null;

  const $ = (id) => document.getElementById(id);

  function say(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.className = isError ? "error" : "";
  }

  function localDate(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  async function call(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") headers[config.csrf_header] = "1";
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method: method,
      headers: headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    if (r.status !== 204) {
      try { data = await r.json(); } catch (_) { data = null; }
    }
    if (!r.ok) {
      const e = data && data.error ? data.error : { code: "HTTP_" + r.status, message: "Request failed." };
      const field = e.details && e.details.field ? " (" + e.details.field + ")" : "";
      throw new Error(e.message + field);
    }
    return data;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function button(label, className, onClick, aria) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = label;
    b.setAttribute("aria-label", aria);
    b.addEventListener("click", onClick);
    return b;
  }

  // `mayApprove`: the caller is an account admin, whose Enable approves a
  // key pending approval; nobody else is offered Enable for such a key.
  // An admin lists every user's keys: each row names its owner.
  function row(key, mayApprove) {
    const tr = document.createElement("tr");
    tr.dataset.id = key.id;
    const name = cell(key.name, "name");
    if (mayApprove && key.owner) {
      const owner = document.createElement("small");
      owner.className = "owner";
      owner.textContent = key.owner;
      name.appendChild(document.createElement("br"));
      name.appendChild(owner);
    }
    tr.appendChild(name);
    const prefix = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = key.prefix;
    prefix.appendChild(code);
    tr.appendChild(prefix);
    tr.appendChild(cell(localDate(key.created_at)));
    const used = cell(key.last_used ? localDate(key.last_used) : "Never", "last-used");
    const from = [key.last_used_ip, key.last_used_route].filter(Boolean).join(" \u00b7 ");
    if (key.last_used && from) {
      const where = document.createElement("small");
      where.className = "last-use";
      where.textContent = from;
      used.appendChild(document.createElement("br"));
      used.appendChild(where);
    }
    tr.appendChild(used);
    const expires = cell(key.expires_at ? localDate(key.expires_at) : "Never");
    if (key.expires_at && key.auto_renew) {
      const renews = document.createElement("small");
      renews.className = "renews";
      renews.textContent = "renews automatically";
      expires.appendChild(document.createElement("br"));
      expires.appendChild(renews);
    }
    tr.appendChild(expires);
    if (key.pending) {
      tr.appendChild(cell("pending approval", "status status-pending"));
    } else {
      const status = cell(key.status.replace("_", " "), "status status-" + key.status);
      // When and why it was revoked (a leak report, an admin, its parent).
      if (key.revoked_at) {
        const why = document.createElement("small");
        why.className = "revocation";
        why.textContent = localDate(key.revoked_at) +
          (key.revocation_reason ? ": " + key.revocation_reason : "");
        status.appendChild(document.createElement("br"));
        status.appendChild(why);
      }
      tr.appendChild(status);
    }
    const actions = document.createElement("td");
    actions.className = "row-actions";
    const mayToggle = !(key.pending && key.status === "disabled") || mayApprove;
    if ((key.status === "active" || key.status === "disabled") && mayToggle) {
      const on = key.status === "active";
      actions.appendChild(button(on ? "Disable" : "Enable", "toggle",
        () => act(key, on ? "disable" : "enable"), (on ? "Disable " : "Enable ") + key.name));
    }
    if (key.status !== "revoked") {
      actions.appendChild(button("Edit", "edit", () => openEdit(key), "Edit " + key.name));
    }
    if (key.status === "active") {
      actions.appendChild(button("Rotate", "rotate", () => rotate(key), "Rotate " + key.name));
    }
    if (key.status !== "revoked") {
      actions.appendChild(button("Delete", "delete danger", () => askDelete(key, false), "Delete " + key.name));
    } else {
      actions.appendChild(button("Remove", "remove", () => askDelete(key, true),
        "Remove " + key.name + " from the list for good"));
    }
    tr.appendChild(actions);
    return tr;
  }

  async function load() {
    try {
      // Every page of the listing (an admin's holds the whole account's
      // keys), at most 100 pages.
      let list = await call("GET", api + "?limit=100");
      const keys = list.data.slice();
      for (let n = 1; list.has_more && list.next_cursor && n < 100; n++) {
        list = await call("GET", api + "?limit=100&cursor=" + encodeURIComponent(list.next_cursor));
        keys.push(...list.data);
      }
      const rows = $("key-rows");
      rows.replaceChildren(...keys.map((key) => row(key, list.may_approve === true)));
      $("empty").hidden = keys.length > 0;
    } catch (e) {
      say("Could not load your keys: " + e.message, true);
    }
  }

  function showKey(created) {
    $("new-key").value = created.key;
    $("copy-status").textContent = "";
    $("key-dialog").showModal();
    $("new-key").select();
  }

  async function act(key, action) {
    try {
      await call("POST", api + "/" + encodeURIComponent(key.id) + "/" + action);
      say("Key \u201c" + key.name + "\u201d " + (action === "disable" ? "disabled." : "enabled."));
      await load();
    } catch (e) {
      say(e.message, true);
    }
  }

  async function rotate(key) {
    try {
      const created = await call("POST", api + "/" + encodeURIComponent(key.id) + "/rotate", {});
      say("Key \u201c" + key.name + "\u201d rotated; the old key works until " + localDate(created.grace_ends_at) + ".");
      showKey(created);
      await load();
    } catch (e) {
      say(e.message, true);
    }
  }

  function askDelete(key, permanent) {
    pendingDelete = { key: key, permanent: permanent };
    $("confirm-title").textContent = (permanent ? "Remove \u201c" : "Delete \u201c") + key.name + "\u201d?";
    $("confirm-text").textContent = permanent
      ? "The revoked key's record is deleted for good; it disappears from this list."
      : "All requests with this key will fail immediately. This cannot be undone.";
    $("confirm-yes").textContent = permanent ? "Remove for good" : "Delete key";
    $("confirm-dialog").showModal();
  }

  async function confirmDelete() {
    const pending = pendingDelete;
    pendingDelete = null;
    $("confirm-dialog").close();
    if (!pending) return;
    const key = pending.key;
    try {
      await call("DELETE", api + "/" + encodeURIComponent(key.id) + (pending.permanent ? "?permanent=true" : ""));
      say(pending.permanent
        ? "Key \u201c" + key.name + "\u201d removed."
        : "Key \u201c" + key.name + "\u201d deleted. Requests with it now fail.");
      await load();
    } catch (e) {
      say(e.message, true);
    }
  }

  async function create(ev) {
    ev.preventDefault();
    const body = { name: $("key-name").value.trim() };
    const description = $("key-description").value.trim();
    if (description) body.description = description;
    const scopes = Array.from(document.querySelectorAll("#scope-list input:checked")).map((c) => c.value);
    if (config.scopes.length) body.permissions = scopes;
    const expires = $("key-expires").value;
    if (expires) body.expires_at = endOfDay(expires);
    if (!$("env-field").hidden) body.environment = $("key-env").value;
    try {
      const created = await call("POST", api, body);
      $("create-form").reset();
      say("Key \u201c" + created.name + "\u201d created.");
      showKey(created);
      await load();
    } catch (e) {
      say("Could not create the key: " + e.message, true);
    }
  }

  // A date field's value as the end of that day in the user's time zone.
  function endOfDay(value) {
    return new Date(value + "T23:59:59").toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  // An RFC 3339 time as a date field's value (the user's time zone).
  function dateValue(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
  }

  let editing = null;

  async function openEdit(key) {
    try {
      const k = await call("GET", api + "/" + encodeURIComponent(key.id));
      editing = { id: k.id, name: k.name, description: k.description || "",
                  permissions: k.permissions.slice().sort().join(" "), expires: dateValue(k.expires_at) };
      $("edit-title").textContent = "Edit \u201c" + k.name + "\u201d";
      $("edit-name").value = k.name;
      $("edit-description").value = k.description || "";
      $("edit-expires").value = editing.expires;
      document.querySelectorAll("#edit-scope-list input").forEach((box) => {
        box.checked = k.permissions.includes(box.value);
      });
      $("edit-dialog").showModal();
      $("edit-name").focus();
    } catch (e) {
      say(e.message, true);
    }
  }

  // Sends only what changed (PATCH semantics).
  async function saveEdit(ev) {
    ev.preventDefault();
    if (!editing) return;
    const body = {};
    const name = $("edit-name").value.trim();
    if (name !== editing.name) body.name = name;
    const description = $("edit-description").value.trim();
    if (description !== editing.description) body.description = description || null;
    if (config.scopes.length) {
      const scopes = Array.from(document.querySelectorAll("#edit-scope-list input:checked")).map((c) => c.value);
      if (scopes.slice().sort().join(" ") !== editing.permissions) body.permissions = scopes;
    }
    const expires = $("edit-expires").value;
    if (expires !== editing.expires) body.expires_at = expires ? endOfDay(expires) : null;
    try {
      if (Object.keys(body).length) {
        await call("PATCH", api + "/" + encodeURIComponent(editing.id), body);
      }
      $("edit-dialog").close();
      say("Key \u201c" + (body.name || editing.name) + "\u201d saved.");
      editing = null;
      await load();
    } catch (e) {
      say("Could not save the key: " + e.message, true);
    }
  }

  function closeKeyDialog() {
    $("new-key").value = "";
    $("key-dialog").close();
    $("create-btn").focus();
  }

  async function copyKey() {
    const text = $("new-key").value;
    try {
      await navigator.clipboard.writeText(text);
      $("copy-status").textContent = "Copied.";
    } catch (_) {
      $("new-key").select();
      $("copy-status").textContent = "Press Ctrl+C (\u2318C) to copy the selected key.";
    }
  }

  function renderScopes(listId, fieldsetId, idPrefix) {
    if (!config.scopes.length) return;
    const list = $(listId);
    config.scopes.forEach((s, i) => {
      const label = document.createElement("label");
      label.className = "scope";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = s.name;
      box.id = idPrefix + i;
      label.htmlFor = box.id;
      const name = document.createElement("code");
      name.textContent = s.name;
      const desc = document.createElement("small");
      desc.textContent = s.description;
      label.append(box, name, desc);
      list.appendChild(label);
    });
    $(fieldsetId).hidden = false;
  }

  async function start() {
    try {
      const r = await fetch("keys/config.json", { credentials: "same-origin" });
      config = await r.json();
    } catch (_) { /* defaults */ }
    renderScopes("scope-list", "scopes", "scope-");
    renderScopes("edit-scope-list", "edit-scopes", "edit-scope-");
    const live = config.prefixes.find((p) => p[0] === "live");
    const starts = config.prefixes.map((p) => p[1]).join(" or ");
    if (live) $("prefix-note").textContent = "Keys start with " + starts + "; only the first characters are shown here.";
    // A service with test keys (sk_test_...) offers the choice; live first.
    if (config.prefixes.length > 1) {
      const select = $("key-env");
      config.prefixes.forEach((p) => {
        const option = document.createElement("option");
        option.value = p[0];
        option.textContent = (p[0] === "live" ? "Live" : p[0] === "test" ? "Test" : p[0]) + " (" + p[1] + "…)";
        option.defaultSelected = p[0] === "live";
        select.appendChild(option);
      });
      $("env-field").hidden = false;
    }
    $("create-form").addEventListener("submit", create);
    $("close-dialog").addEventListener("click", closeKeyDialog);
    $("key-dialog").addEventListener("cancel", () => { $("new-key").value = ""; });
    $("copy-btn").addEventListener("click", copyKey);
    $("edit-form").addEventListener("submit", saveEdit);
    $("edit-cancel").addEventListener("click", () => { editing = null; $("edit-dialog").close(); });
    $("confirm-yes").addEventListener("click", confirmDelete);
    $("confirm-cancel").addEventListener("click", () => { pendingDelete = null; $("confirm-dialog").close(); });
    await load();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
