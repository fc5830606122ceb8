// rhinobox web page. Plain JavaScript on the public HTTP API only: no framework, no
// external requests. Every value that comes from the store (names, comments, paths) is
// put into the page with textContent, never parsed as HTML.
'use strict';

const TOKEN_KEY = 'rhinobox.token';
// Files go up in batches, one multipart request each: the daemon commits (and syncs) a
// request once, so a batch costs one commit where one PUT per file costs one each
// (measured for 100 photos in the README's web page section). Two batches in flight.
const BATCH_FILES_MAX = 20;
const BATCH_BYTES_MAX = 32 * 1024 * 1024;
const BATCHES_IN_FLIGHT = 2;
// A 503 (the daemon's job slots are full) is retried after its Retry-After, this often.
const UPLOAD_RETRIES_MAX = 5;
const PAGE_LIMIT = 50;
const SEARCH_LIMIT = 200;
// Images up to this size get a preview in the record dialog.
const PREVIEW_BYTES_MAX = 20 * 1024 * 1024;

const $ = (selector) => document.querySelector(selector);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  page: 1,
  total: 0,
  record: null,
  previewUrl: null,
  searchTimer: 0,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  if (state.token) headers.set('Authorization', 'Bearer ' + state.token);
  return headers;
}

/** Calls the API; returns the parsed JSON, throws ApiError with the daemon's message. */
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (response.status === 401) {
    askForToken(state.token ? 'That token was not accepted.' : '');
    throw new ApiError(401, 'the API token is missing or wrong');
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || response.statusText);
  }
  return body;
}

// ---- formatting ---------------------------------------------------------------------

function formatBytes(n) {
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = n;
  let unit = -1;
  do { value /= 1024; unit += 1; } while (value >= 1024 && unit < units.length - 1);
  return value.toFixed(value < 10 ? 1 : 0) + ' ' + units[unit];
}

function formatTime(iso) {
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

function element(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) node.append(child);
  return node;
}

function toast(message) {
  const box = $('#toast');
  box.textContent = message;
  box.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove('show'), 3500);
}

// ---- token --------------------------------------------------------------------------

function askForToken(message) {
  $('#app').hidden = true;
  $('#token-panel').hidden = false;
  $('#token-error').textContent = message || '';
  $('#forget-token').hidden = true;
  $('#token').focus();
}

async function submitToken(event) {
  event.preventDefault();
  state.token = $('#token').value.trim();
  let stats;
  try {
    stats = await api('/statistics');
  } catch (error) {
    if (error.status !== 401) $('#token-error').textContent = error.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $('#token').value = '';
  showApp(stats);
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = '';
  askForToken('');
}

/** Shows the page once the API answers; `stats` is the probe's reply when there was one. */
function showApp(stats) {
  $('#token-panel').hidden = true;
  $('#app').hidden = false;
  $('#forget-token').hidden = !state.token;
  loadFiles();
  if (stats) renderStatistics(stats); else loadStatistics();
  loadDaemonInfo();
}

// ---- upload -------------------------------------------------------------------------

function uploadRow(file) {
  const progress = element('progress', { max: 1, value: 0 });
  progress.setAttribute('aria-label', 'Upload of ' + (file.name || 'a file without name'));
  const result = element('span', { className: 'result', textContent: 'waiting' });
  const row = element('li', {}, [
    element('span', { className: 'name', textContent: file.name || '(no name)',
      title: file.name }),
    progress,
    result,
  ]);
  $('#upload-list').prepend(row);
  return {
    progress(fraction) { progress.value = fraction; result.textContent =
      Math.round(fraction * 100) + ' %'; },
    done(entry) {
      progress.value = 1;
      row.classList.add(entry.duplicate ? 'duplicate' : 'stored');
      result.textContent = (entry.duplicate ? 'duplicate of ' : 'stored as ') + entry.path;
      result.title = entry.path;
      row.dataset.hash = entry.hash;
    },
    failed(message) {
      row.classList.add('failed');
      result.textContent = 'failed: ' + message;
      result.title = message;
    },
  };
}

/** Sends one request with upload progress; resolves with {status, body, retryAfter}. */
function send(method, url, body, onProgress, contentType) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open(method, url);
    if (state.token) request.setRequestHeader('Authorization', 'Bearer ' + state.token);
    if (contentType) request.setRequestHeader('Content-Type', contentType);
    request.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    request.onload = () => {
      let reply = null;
      try { reply = JSON.parse(request.responseText); } catch (_) { reply = null; }
      resolve({ status: request.status, body: reply,
        retryAfter: Number(request.getResponseHeader('Retry-After')) || 1 });
    };
    request.onerror = () => reject(new Error('network error'));
    request.ontimeout = () => reject(new Error('timed out'));
    request.send(body);
  });
}

function annotations() {
  return { category: $('#upload-category').value.trim(), comment: $('#upload-comment').value };
}

/** Waits out a 503's Retry-After (capped); false once the retries are used up. */
async function mayRetry(reply, attempt) {
  if (reply.status !== 503 || attempt >= UPLOAD_RETRIES_MAX) return false;
  await new Promise((r) => setTimeout(r, Math.min(reply.retryAfter, 30) * 1000));
  return true;
}

function failure(reply) {
  return (reply.body && reply.body.error) || 'HTTP ' + reply.status;
}

/** One file alone, as a PUT: the fallback when its batch failed as a whole. */
async function uploadOne(item, counts) {
  const { category, comment } = annotations();
  const query = new URLSearchParams();
  if (category) query.set('category', category);
  if (comment) query.set('comment', comment);
  const url = '/ingest/media/' + encodeURIComponent(item.file.name || 'file') +
    (query.toString() ? '?' + query : '');
  for (let attempt = 0; ; attempt += 1) {
    let reply;
    try {
      reply = await send('PUT', url, item.file, (loaded, total) => item.row.progress(
        loaded / total), item.file.type || 'application/octet-stream');
    } catch (error) {
      item.row.failed(error.message);
      counts.failed += 1;
      return;
    }
    if (reply.status === 200 && reply.body && reply.body.stored) {
      const entry = reply.body.stored[0];
      item.row.done(entry);
      counts[entry.duplicate ? 'duplicate' : 'stored'] += 1;
      return;
    }
    if (await mayRetry(reply, attempt)) continue;
    item.row.failed(failure(reply));
    counts.failed += 1;
    if (reply.status === 401) askForToken('That token was not accepted.');
    return;
  }
}

/** One multipart request for a batch; per-file progress from the bytes sent so far. */
async function uploadBatch(batch, counts) {
  const { category, comment } = annotations();
  const form = new FormData();
  if (category) form.append('category', category);
  if (comment) form.append('comment', comment);
  const starts = [];
  let bytes = 0;
  for (const item of batch) {
    form.append('file', item.file, item.file.name);
    starts.push(bytes);
    bytes += item.file.size;
  }
  const progress = (loaded, total) => {
    const sent = total ? loaded * (bytes / total) : 0;
    batch.forEach((item, i) => item.row.progress(Math.min(1, Math.max(0,
      (sent - starts[i]) / Math.max(item.file.size, 1)))));
  };
  for (let attempt = 0; ; attempt += 1) {
    let reply;
    try {
      reply = await send('POST', '/ingest/media', form, progress);
    } catch (error) {
      reply = { status: 0, body: { error: error.message } };
    }
    if (reply.status === 200 && reply.body && reply.body.stored) {
      reply.body.stored.forEach((entry, i) => {
        batch[i].row.done(entry);
        counts[entry.duplicate ? 'duplicate' : 'stored'] += 1;
      });
      return;
    }
    if (reply.status === 401) {
      batch.forEach((item) => item.row.failed('the API token is missing or wrong'));
      counts.failed += batch.length;
      askForToken('That token was not accepted.');
      return;
    }
    if (await mayRetry(reply, attempt)) continue;
    // A request is all or nothing: find out which file it was, one by one.
    if (batch.length > 1) {
      for (const item of batch) await uploadOne(item, counts);
      return;
    }
    batch[0].row.failed(failure(reply));
    counts.failed += 1;
    return;
  }
}

/** Splits the picked files into batches of at most BATCH_FILES_MAX / BATCH_BYTES_MAX. */
function batchesOf(items) {
  const batches = [];
  let current = [];
  let bytes = 0;
  for (const item of items) {
    if (current.length && (current.length >= BATCH_FILES_MAX ||
        bytes + item.file.size > BATCH_BYTES_MAX)) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += item.file.size;
  }
  if (current.length) batches.push(current);
  return batches;
}

async function uploadFiles(files) {
  if (!files.length) return;
  const counts = { stored: 0, duplicate: 0, failed: 0 };
  const batches = batchesOf(files.map((file) => ({ file, row: uploadRow(file) })));
  const summary = $('#upload-summary');
  delete summary.dataset.done;
  const show = () => {
    const finished = counts.stored + counts.duplicate + counts.failed;
    summary.textContent = `${finished} of ${files.length} done: ${counts.stored} stored, ` +
      `${counts.duplicate} duplicate, ${counts.failed} failed`;
  };
  show();
  const started = performance.now();
  let next = 0;
  async function worker() {
    while (next < batches.length) {
      await uploadBatch(batches[next++], counts);
      show();
    }
  }
  await Promise.all(Array.from({ length: Math.min(BATCHES_IN_FLIGHT, batches.length) },
    worker));
  summary.dataset.done = String(files.length);
  summary.dataset.ms = String(Math.round(performance.now() - started));
  refreshAll();
}

function setUpDropZone() {
  const drop = $('#drop');
  const input = $('#file-input');
  input.addEventListener('change', () => { uploadFiles([...input.files]); input.value = ''; });
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  for (const type of ['dragleave', 'drop']) {
    drop.addEventListener(type, () => drop.classList.remove('over'));
  }
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    uploadFiles([...e.dataTransfer.files]);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
}

// ---- files --------------------------------------------------------------------------

function filesQuery() {
  const name = $('#search').value.trim();
  const mediaType = $('#media-type').value;
  const category = $('#category').value.trim();
  const query = new URLSearchParams();
  if (mediaType) query.set('media_type', mediaType);
  if (name) {
    query.set('name', name);
    query.set('limit', String(SEARCH_LIMIT));
    return { path: '/files/search?' + query, searching: true, category: '' };
  }
  if (category) query.set('category', category);
  query.set('page', String(state.page));
  query.set('limit', String(PAGE_LIMIT));
  return { path: '/files?' + query, searching: false, category };
}

async function loadFiles() {
  const { path, searching, category } = filesQuery();
  $('#category').disabled = searching;
  let reply;
  try {
    reply = await api(path);
  } catch (error) {
    if (error.status !== 401) $('#files-summary').textContent = 'Could not list: ' + error.message;
    return;
  }
  state.total = reply.total;
  renderFiles(reply.files);
  const shown = reply.files.length;
  const pages = Math.max(1, Math.ceil(reply.total / PAGE_LIMIT));
  if (searching) {
    $('#files-summary').textContent = `${reply.total} match${reply.total === 1 ? '' : 'es'}` +
      (reply.total > shown ? `, newest ${shown} shown` : '');
    $('#page-info').textContent = '';
  } else {
    $('#files-summary').textContent = `${reply.total} file${reply.total === 1 ? '' : 's'}`;
    $('#page-info').textContent = `Page ${state.page} of ${pages}`;
  }
  $('#newer').disabled = searching || state.page <= 1;
  $('#older').disabled = searching || state.page >= pages;
  const hint = $('#files-hint');
  hint.hidden = !(category && reply.total === 0 && !category.includes('/'));
  hint.textContent = `A category is stored as media type/subtype/hint (a hint "${category}" ` +
    `given at upload becomes e.g. images/jpg/${category}); the filter matches a whole ` +
    'category or a prefix of it at a "/".';
  $('#files-empty').hidden = shown > 0;
  document.body.dataset.ready = '1';
  if (!performance.getEntriesByName('rhinobox-ready').length) {
    performance.mark('rhinobox-ready');
  }
}

function renderFiles(files) {
  const body = $('#files-table tbody');
  const rows = files.map((file) => {
    const open = element('button', { type: 'button', className: 'file-name',
      textContent: file.original_name || '(no name)' });
    open.addEventListener('click', () => openRecord(file.hash));
    const download = downloadLink(file, 'Download');
    download.className = 'button small';
    const remove = element('button', { type: 'button', className: 'danger small',
      textContent: 'Delete' });
    remove.setAttribute('aria-label', 'Delete ' + (file.original_name || file.hash));
    remove.addEventListener('click', () => confirmDelete(file));
    const row = element('tr', {}, [
      element('td', {}, [open, element('span', { className: 'sub', textContent: file.path })]),
      element('td', {}, [element('span', { className: 'badge', textContent: file.media_type }),
        element('span', { className: 'sub', textContent: file.mime_type })]),
      element('td', { className: 'num', textContent: formatBytes(file.size) }),
      element('td', { textContent: formatTime(file.uploaded_at) }),
      element('td', { className: 'row-actions' }, [download, remove]),
    ]);
    row.dataset.hash = file.hash;
    return row;
  });
  body.replaceChildren(...rows);
}

/** A link that downloads the file; with a token it goes through fetch and a blob: URL. */
function downloadLink(file, text) {
  const link = element('a', { textContent: text,
    href: '/files/download?hash=' + encodeURIComponent(file.hash) });
  link.download = file.original_name || file.hash;
  link.addEventListener('click', (event) => {
    if (!state.token) return;
    event.preventDefault();
    downloadWithToken(file);
  });
  return link;
}

async function downloadWithToken(file) {
  try {
    const response = await fetch('/files/download?hash=' + encodeURIComponent(file.hash),
      { headers: authHeaders() });
    if (!response.ok) throw new ApiError(response.status, 'HTTP ' + response.status);
    const url = URL.createObjectURL(await response.blob());
    const link = element('a', { href: url, download: file.original_name || file.hash });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    toast('Download failed: ' + error.message);
  }
}

// ---- one record ---------------------------------------------------------------------

async function openRecord(hash) {
  let record;
  try {
    record = await api('/files/metadata?hash=' + encodeURIComponent(hash));
  } catch (error) {
    if (error.status !== 401) toast('Could not open: ' + error.message);
    return;
  }
  state.record = record;
  $('#record-title').textContent = record.original_name || '(no name)';
  const fields = [
    ['Path', record.path], ['Type', record.mime_type], ['Category', record.category],
    ['Size', `${formatBytes(record.size)} (${record.size} bytes)`],
    ['Uploaded', formatTime(record.uploaded_at)], ['Comment', record.comment || '—'],
    ['BLAKE3', record.hash],
  ];
  $('#record-fields').replaceChildren(...fields.flatMap(([name, value]) => [
    element('dt', { textContent: name }),
    element('dd', {}, [name === 'BLAKE3' || name === 'Path'
      ? element('code', { textContent: value }) : value]),
  ]));
  const download = $('#record-download');
  const fresh = downloadLink(record, 'Download');
  fresh.id = 'record-download';
  fresh.className = 'button primary';
  download.replaceWith(fresh);
  showPreview(record);
  $('#record-dialog').showModal();
}

async function showPreview(record) {
  const box = $('#record-preview');
  box.hidden = true;
  box.replaceChildren();
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  if (record.media_type !== 'images' || record.size > PREVIEW_BYTES_MAX) return;
  try {
    const response = await fetch('/files/stream?hash=' + encodeURIComponent(record.hash),
      { headers: authHeaders() });
    if (!response.ok || state.record !== record) return;
    state.previewUrl = URL.createObjectURL(await response.blob());
    const image = element('img', { src: state.previewUrl, alt: 'Preview of ' +
      (record.original_name || 'the image') });
    // Bytes a browser cannot decode as an image get no broken-image icon.
    image.addEventListener('error', () => { box.hidden = true; });
    box.append(image);
    box.hidden = false;
  } catch (_) { /* no preview: the record is still shown */ }
}

function closeRecord() {
  $('#record-dialog').close();
}

// ---- delete -------------------------------------------------------------------------

function confirmDelete(file) {
  const dialog = $('#confirm-dialog');
  $('#confirm-text').textContent = `“${file.original_name || file.hash}” (${file.path}) ` +
    'will be removed from the disk. This cannot be undone.';
  dialog.returnValue = '';
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'delete') return;
    try {
      await api('/files/' + encodeURIComponent(file.hash), { method: 'DELETE' });
    } catch (error) {
      if (error.status !== 401) toast('Delete failed: ' + error.message);
      return;
    }
    if ($('#record-dialog').open) closeRecord();
    toast('Deleted ' + (file.original_name || file.hash));
    refreshAll();
  };
  dialog.showModal();
}

// ---- statistics ---------------------------------------------------------------------

async function loadStatistics() {
  let stats;
  try { stats = await api('/statistics'); } catch (_) { return; }
  renderStatistics(stats);
}

function renderStatistics(stats) {
  const totals = [
    ['Files stored', stats.files.toLocaleString()], ['Bytes stored', formatBytes(stats.bytes)],
    ['Duplicates since start', stats.duplicates.toLocaleString()],
    ['Bytes saved by dedup', formatBytes(stats.bytes_deduplicated)],
  ];
  $('#stats-totals').replaceChildren(...totals.map(([name, value]) =>
    element('div', {}, [element('dt', { textContent: name }),
      element('dd', { textContent: value })])));
  const types = Object.entries(stats.by_media_type).sort((a, b) => b[1].bytes - a[1].bytes);
  $('#stats-types').tBodies[0].replaceChildren(...types.map(([type, t]) => {
    const share = stats.bytes ? t.bytes / stats.bytes : 0;
    const bar = element('div', { className: 'bar', title: (share * 100).toFixed(1) + ' %' });
    bar.style.width = Math.max(share * 100, 0.5) + '%';
    return element('tr', {}, [element('td', { textContent: type }),
      element('td', { className: 'num', textContent: t.files.toLocaleString() }),
      element('td', { className: 'num', textContent: formatBytes(t.bytes) }),
      element('td', {}, [bar])]);
  }));
}

async function loadDaemonInfo() {
  try {
    const info = await api('/stats');
    $('#daemon-info').textContent = `io engine ${info.io_engine} · durability ` +
      `${info.durability} · ${info.cores} core${info.cores === 1 ? '' : 's'}`;
  } catch (_) { /* the footer stays empty */ }
}

function refreshAll() {
  loadFiles();
  loadStatistics();
}

// ---- start --------------------------------------------------------------------------

function onFilterChange(resetPage) {
  if (resetPage) state.page = 1;
  loadFiles();
}

function start() {
  $('#token-form').addEventListener('submit', submitToken);
  $('#forget-token').addEventListener('click', forgetToken);
  setUpDropZone();
  $('#filters').addEventListener('submit', (e) => { e.preventDefault(); onFilterChange(true); });
  $('#search').addEventListener('input', () => {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(() => onFilterChange(true), 250);
  });
  $('#media-type').addEventListener('change', () => onFilterChange(true));
  $('#category').addEventListener('change', () => onFilterChange(true));
  $('#newer').addEventListener('click', () => { state.page -= 1; onFilterChange(false); });
  $('#older').addEventListener('click', () => { state.page += 1; onFilterChange(false); });
  $('#record-close').addEventListener('click', closeRecord);
  $('#record-delete').addEventListener('click', () => state.record && confirmDelete(state.record));
  // One probe decides whether the token prompt comes first.
  api('/statistics').then(showApp, (error) => {
    if (error.status !== 401) { showApp(); toast('The daemon answered: ' + error.message); }
  });
}

start();
