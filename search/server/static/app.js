// The search page: results as you type, modes, filter chips, a document view, keyboard navigation.
// Plain JavaScript, no dependencies, nothing loaded from elsewhere. Text from the index is only ever
// put into the page as text nodes (never as HTML).
"use strict";

(function () {
  const DEBOUNCE_MS = 180;
  const SNIPPET_CHARS = 220;
  const CONTEXT_LINES = 12;
  const NOT_LINES = /\.(pdf|html?)$/i; // hits of these carry their text; the file has no lines to show

  const $ = (id) => document.getElementById(id);
  const input = $("q");
  const results = $("results");
  const statusLine = $("status");
  const statsLine = $("stats");
  const chipsBox = $("chips");
  const doc = $("doc");
  const docBody = $("doc-body");
  const docNote = $("doc-note");
  const tokenBox = $("token-box");

  const state = {
    mode: "hybrid",
    filters: { tag: new Set(), type: new Set(), path: new Set() },
    hits: [],
    terms: [],
    selected: -1,
    seq: 0,
    controller: null,
    timer: 0,
    passages: null,
    openIndex: -1,
    root: "", // paths are shown relative to the folder above the indexed folders
  };

  // ----- talking to the server -------------------------------------------------------------

  function token() {
    return sessionStorage.getItem("search-token") || "";
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, params, signal) {
    const url = new URL(path, location.origin);
    for (const [key, value] of params || []) url.searchParams.append(key, value);
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    let response;
    try {
      response = await fetch(url, { headers, signal, cache: "no-store" });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "无法连接搜索引擎 · Cannot reach the search engine: is `search serve` still running?");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      if (response.status === 401) showTokenBox();
      const message = (data && data.error) || response.status + " " + response.statusText;
      throw new ApiError(response.status, message);
    }
    return data;
  }

  function showTokenBox() {
    tokenBox.hidden = false;
    $("token").focus();
  }

  tokenBox.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("search-token", $("token").value.trim());
    tokenBox.hidden = true;
    loadIndexInfo();
    runSearch();
  });

  // ----- index facts and filter chips -------------------------------------------------------

  async function loadIndexInfo() {
    try {
      const stats = await api("/api/stats");
      state.passages = stats.passages;
      statsLine.textContent =
        `${stats.files} 个文件 files · ${stats.passages} 段 passages` +
        (stats.keyword_only ? " · 仅关键词 keyword-only" : "") +
        ` · ${stats.generation}`;
      statsLine.classList.remove("error");
      if (stats.passages === 0 && !input.value.trim()) {
        setStatus("索引为空 · The index is empty: run `search index PATHS` to add notes.", "empty");
      }
    } catch (error) {
      statsLine.textContent = error.status === 0 ? "无法连接搜索引擎 · Cannot reach the search engine" : error.message;
      statsLine.classList.add("error");
      return;
    }
    try {
      renderChips(await api("/api/facets"));
    } catch (error) {
      chipsBox.textContent = "";
    }
  }

  function renderChips(facets) {
    state.root = displayRoot(facets.folders || []);
    chipsBox.textContent = "";
    const groups = [
      ["tag", "标签 Tags", facets.tags || [], (v) => "#" + v],
      ["type", "类型 Types", facets.types || [], (v) => "." + v],
      ["path", "文件夹 Folders", facets.folders || [], (v) => shortFolder(v) + "/"],
    ];
    for (const [kind, title, values, label] of groups) {
      if (!values.length) continue;
      const group = document.createElement("div");
      group.className = "chip-group";
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", title);
      const name = document.createElement("span");
      name.className = "chip-title";
      name.textContent = title;
      group.appendChild(name);
      for (const value of values) {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.dataset.kind = kind;
        chip.dataset.value = value;
        chip.title = kind === "path" ? value : label(value);
        chip.textContent = label(value);
        const filterValue = kind === "path" ? folderGlob(value) : value;
        chip.setAttribute("aria-pressed", String(state.filters[kind].has(filterValue)));
        chip.addEventListener("click", () => {
          const set = state.filters[kind];
          if (set.has(filterValue)) set.delete(filterValue);
          else set.add(filterValue);
          chip.setAttribute("aria-pressed", String(set.has(filterValue)));
          runSearch();
        });
        group.appendChild(chip);
      }
      chipsBox.appendChild(group);
    }
  }

  function folderGlob(folder) {
    return folder.replace(/\/+$/, "") + "/**";
  }

  function shortFolder(folder) {
    return relative(folder) || folder;
  }

  // The folder that holds every indexed folder, less one level, so that a path shows as
  // notes/a.md rather than /home/me/notes/a.md (the full path is in the tooltip).
  function displayRoot(folders) {
    if (!folders.length) return "";
    let common = folders[0].split("/");
    for (const folder of folders.slice(1)) {
      const parts = folder.split("/");
      let i = 0;
      while (i < common.length && i < parts.length && common[i] === parts[i]) i++;
      common = common.slice(0, i);
    }
    const root = common.slice(0, -1).join("/");
    return root ? root + "/" : "";
  }

  function relative(path) {
    return state.root && path.startsWith(state.root) ? path.slice(state.root.length) : path;
  }

  // ----- searching --------------------------------------------------------------------------

  function scheduleSearch() {
    clearTimeout(state.timer);
    state.timer = setTimeout(runSearch, DEBOUNCE_MS);
  }

  function params() {
    const list = [["q", input.value], ["mode", state.mode], ["k", "20"]];
    for (const kind of ["path", "tag", "type"]) for (const value of state.filters[kind]) list.push([kind, value]);
    return list;
  }

  function remember() {
    const url = new URL(location.href);
    url.search = "";
    for (const [key, value] of params()) if (key !== "k" && value && !(key === "mode" && value === "hybrid")) url.searchParams.append(key, value);
    history.replaceState(null, "", url.pathname + url.search);
  }

  async function runSearch() {
    clearTimeout(state.timer);
    const text = input.value.trim();
    remember();
    if (state.controller) state.controller.abort();
    if (!text) {
      state.hits = [];
      renderHits();
      if (state.passages === 0) setStatus("索引为空 · The index is empty: run `search index PATHS` to add notes.", "empty");
      else setStatus("输入以搜索 · Type to search", "");
      return;
    }
    const seq = ++state.seq;
    const controller = new AbortController();
    state.controller = controller;
    document.body.classList.add("busy");
    try {
      const data = await api("/api/search", params(), controller.signal);
      if (seq !== state.seq) return; // a newer query is on its way
      state.hits = data.hits;
      state.terms = data.highlight_terms || [];
      state.passages = data.passages;
      renderHits();
      describe(data, text);
    } catch (error) {
      if (error.name === "AbortError" || seq !== state.seq) return;
      state.hits = [];
      renderHits();
      if (error.status === 503) setStatus("索引不可用 · The index is not available: " + error.message, "error");
      else setStatus(error.message, "error");
    } finally {
      if (seq === state.seq) document.body.classList.remove("busy");
    }
  }

  function describe(data, text) {
    const notice = data.notice ? " · " + data.notice : "";
    if (data.hits.length) {
      setStatus(`${data.hits.length} 条结果 results · ${modeName(data.mode)} · ${data.took_ms} ms${notice}`, "");
    } else if (data.passages === 0) {
      setStatus("索引为空 · The index is empty: run `search index PATHS` to add notes.", "empty");
    } else if (data.filtered_out) {
      setStatus(`没有段落符合筛选条件 · No passages match the filters (${data.filtered_out})`, "empty");
    } else {
      setStatus(`没有结果 · No results for “${text}”${notice}`, "empty");
    }
  }

  function modeName(mode) {
    return { hybrid: "混合 hybrid", bm25: "关键词 keyword", dense: "语义 semantic" }[mode] || mode;
  }

  function setStatus(text, kind) {
    statusLine.textContent = text;
    statusLine.className = "status" + (kind ? " " + kind : "");
  }

  // ----- rendering hits ---------------------------------------------------------------------

  function termPattern(terms) {
    // A single Chinese character that is part of a longer term (列 of 序列) is a recall aid of the
    // keyword index, not a word the reader typed: marking it would light up 列 and 行 everywhere.
    const words = terms.filter((t) => t && t.trim());
    const usable = words
      .filter((t) => t.length > 1 || /^[\x00-\x7f]$/.test(t) || !words.some((w) => w.length > 1 && w.includes(t)))
      .sort((a, b) => b.length - a.length);
    if (!usable.length) return null;
    // Latin words match whole words only ("do" must not light up "document"), also when they touch
    // Chinese characters ("用BM25检索"); Chinese has no spaces between words: its terms match anywhere.
    const escaped = usable.map((t) => {
      const text = t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      return /^[\x00-\x7f]+$/.test(t) ? "(?<![\\p{Script=Latin}\\p{N}_])" + text + "(?![\\p{Script=Latin}\\p{N}_])" : text;
    });
    return new RegExp(escaped.join("|"), "giu");
  }

  // Appends `text` to `parent` with the terms wrapped in <mark>; returns how many were marked.
  function appendMarked(parent, text, pattern) {
    if (!pattern) {
      parent.appendChild(document.createTextNode(text));
      return 0;
    }
    let last = 0;
    let count = 0;
    pattern.lastIndex = 0;
    for (const match of text.matchAll(pattern)) {
      if (match.index > last) parent.appendChild(document.createTextNode(text.slice(last, match.index)));
      const mark = document.createElement("mark");
      mark.textContent = match[0];
      parent.appendChild(mark);
      last = match.index + match[0].length;
      count++;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
    return count;
  }

  function snippetOf(text, pattern) {
    const flat = text.replace(/\s+/g, " ").trim();
    let start = 0;
    if (pattern) {
      pattern.lastIndex = 0;
      const first = pattern.exec(flat);
      if (first) start = Math.max(0, first.index - Math.floor(SNIPPET_CHARS / 5));
    }
    const window = flat.slice(start, start + SNIPPET_CHARS);
    return (start ? "…" : "") + window + (start + SNIPPET_CHARS < flat.length ? "…" : "");
  }

  function renderHits() {
    results.textContent = "";
    state.selected = -1;
    input.removeAttribute("aria-activedescendant");
    input.setAttribute("aria-expanded", String(state.hits.length > 0));
    const pattern = termPattern(state.terms);
    state.hits.forEach((hit, i) => {
      const item = document.createElement("li");
      item.className = "hit";
      item.id = "hit-" + i;
      item.setAttribute("role", "option");
      item.setAttribute("aria-selected", "false");
      item.dataset.index = String(i);

      const meta = document.createElement("div");
      meta.className = "hit-meta";
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = String(i + 1);
      const where = document.createElement("span");
      where.className = "location";
      where.textContent = displayLocation(hit);
      where.title = hit.location || hit.path;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      score.title = scoreTitle(hit);
      meta.append(rank, where, score);

      const heading = document.createElement("div");
      heading.className = "heading";
      heading.textContent = (hit.heading_path || []).join(" › ");

      const snippet = document.createElement("p");
      snippet.className = "snippet";
      appendMarked(snippet, snippetOf(hit.text, pattern), pattern);

      item.append(meta);
      if (heading.textContent) item.append(heading);
      item.append(snippet);
      item.addEventListener("click", () => {
        select(i);
        openHit(i);
      });
      results.appendChild(item);
    });
  }

  function scoreTitle(hit) {
    const parts = [`score ${hit.score.toFixed(4)}`];
    if (hit.bm25_rank != null) parts.push(`BM25 #${hit.bm25_rank} (${hit.bm25_score.toFixed(3)})`);
    if (hit.dense_rank != null) parts.push(`dense #${hit.dense_rank} (${hit.dense_score.toFixed(3)})`);
    if (hit.reread_score != null) parts.push(`re-read ${hit.reread_score.toFixed(3)}`);
    if (hit.hub_penalty != null) parts.push(`hub −${hit.hub_penalty.toFixed(3)}`);
    return parts.join(" · ");
  }

  function displayLocation(hit) {
    return relative(hit.location || `${hit.path}:${hit.line_start}`);
  }

  function select(i) {
    const items = results.children;
    if (state.selected >= 0 && items[state.selected]) {
      items[state.selected].classList.remove("selected");
      items[state.selected].setAttribute("aria-selected", "false");
    }
    state.selected = i;
    if (i >= 0 && items[i]) {
      items[i].classList.add("selected");
      items[i].setAttribute("aria-selected", "true");
      items[i].scrollIntoView({ block: "nearest" });
      input.setAttribute("aria-activedescendant", items[i].id);
    } else {
      input.removeAttribute("aria-activedescendant");
    }
  }

  // ----- the document view ------------------------------------------------------------------

  async function openHit(i) {
    const hit = state.hits[i];
    if (!hit) return;
    state.openIndex = i;
    doc.hidden = false;
    document.body.classList.add("doc-open");
    $("doc-location").textContent = displayLocation(hit);
    $("doc-location").title = hit.location || hit.path;
    $("doc-heading").textContent = (hit.heading_path || []).join(" › ");
    docBody.textContent = "";
    docNote.hidden = true;
    const pattern = termPattern(state.terms);
    if (NOT_LINES.test(hit.path)) {
      note("这是提取出的段落文本 · The passage as extracted from the file");
      const block = document.createElement("div");
      block.className = "line focus passage";
      appendMarked(block, hit.text, pattern);
      docBody.appendChild(block);
      doc.focus({ preventScroll: true });
      return;
    }
    const wanted = i;
    try {
      const data = await api("/api/document", [
        ["path", hit.path],
        ["line", String(hit.line_start)],
        ["end", String(Math.max(hit.line_start, hit.line_end))],
        ["context", String(CONTEXT_LINES)],
      ]);
      if (state.openIndex !== wanted) return;
      renderDocument(data, pattern);
    } catch (error) {
      if (state.openIndex !== wanted) return;
      note(error.message);
      const block = document.createElement("div");
      block.className = "line focus passage";
      appendMarked(block, hit.text, pattern);
      docBody.appendChild(block);
    }
    doc.focus({ preventScroll: true });
  }

  function note(text) {
    docNote.textContent = text;
    docNote.hidden = false;
  }

  function renderDocument(data, pattern) {
    const [focusStart, focusEnd] = data.focus;
    let firstFocus = null;
    data.lines.forEach((text, offset) => {
      const number = data.first_line + offset;
      const line = document.createElement("div");
      line.className = "line";
      line.dataset.line = String(number);
      const gutter = document.createElement("span");
      gutter.className = "ln";
      gutter.textContent = String(number);
      const body = document.createElement("span");
      body.className = "tx";
      const inFocus = number >= focusStart && number <= focusEnd;
      appendMarked(body, text || " ", inFocus ? pattern : null);
      if (inFocus) {
        line.classList.add("focus");
        if (!firstFocus) firstFocus = line;
      }
      line.append(gutter, body);
      docBody.appendChild(line);
    });
    if (data.truncated) note("部分行过长已截断 · Some long lines are cut short");
    // scroll the document pane only (scrollIntoView would scroll the page away from the search box)
    if (firstFocus) docBody.scrollTop = Math.max(0, firstFocus.offsetTop - docBody.clientHeight / 3);
  }

  function closeDoc() {
    if (doc.hidden) return false;
    doc.hidden = true;
    state.openIndex = -1;
    document.body.classList.remove("doc-open");
    const item = results.children[state.selected];
    input.focus();
    if (item) item.scrollIntoView({ block: "nearest" });
    return true;
  }

  // ----- keyboard and controls --------------------------------------------------------------

  input.addEventListener("input", scheduleSearch);
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      state.mode = radio.value;
      runSearch();
    });
  }
  $("doc-close").addEventListener("click", closeDoc);

  document.addEventListener("keydown", (event) => {
    if (event.isComposing || event.keyCode === 229) return; // typing Chinese with an input method
    const typingElsewhere = event.target !== input && /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName) && event.target.type !== "radio";
    if (event.key === "Escape") {
      if (closeDoc()) {
        event.preventDefault();
      } else if (input.value) {
        input.value = "";
        runSearch();
        input.focus();
        event.preventDefault();
      }
      return;
    }
    if (typingElsewhere) return;
    if (event.key === "/" && event.target !== input) {
      input.focus();
      input.select();
      event.preventDefault();
      return;
    }
    if (!doc.hidden && document.activeElement && doc.contains(document.activeElement) && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
      return; // arrows scroll the open document
    }
    if (event.key === "ArrowDown" && state.hits.length) {
      select(Math.min(state.selected + 1, state.hits.length - 1));
      event.preventDefault();
    } else if (event.key === "ArrowUp" && state.hits.length) {
      if (state.selected <= 0) {
        select(-1);
        input.focus();
      } else {
        select(state.selected - 1);
      }
      event.preventDefault();
    } else if (event.key === "Enter") {
      if (event.target === input && state.selected < 0) {
        runSearch(); // search now, without waiting for the pause
        event.preventDefault();
      } else if (state.selected >= 0 && (event.target === input || event.target === document.body || results.contains(event.target))) {
        openHit(state.selected);
        event.preventDefault();
      }
    }
  });

  // ----- start ------------------------------------------------------------------------------

  // /#token=SECRET: the token of a server started with --token (the fragment never reaches the server)
  function takeTokenFromAddress() {
    const hash = new URLSearchParams(location.hash.slice(1));
    if (!hash.get("token")) return false;
    sessionStorage.setItem("search-token", hash.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
    tokenBox.hidden = true;
    return true;
  }

  window.addEventListener("hashchange", () => {
    if (takeTokenFromAddress()) loadIndexInfo().then(runSearch);
  });

  function start() {
    takeTokenFromAddress();
    const query = new URLSearchParams(location.search);
    if (query.get("mode")) {
      state.mode = query.get("mode");
      const radio = document.querySelector(`input[name="mode"][value="${CSS.escape(state.mode)}"]`);
      if (radio) radio.checked = true;
    }
    for (const kind of ["path", "tag", "type"]) for (const value of query.getAll(kind)) state.filters[kind].add(value);
    if (query.get("q")) input.value = query.get("q");
    loadIndexInfo().then(() => {
      document.body.dataset.ready = "1"; // index facts and chips are in place
      if (input.value.trim()) runSearch();
    });
  }

  start();
})();
