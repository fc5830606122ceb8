// Drives the daemon's web page (GET /) in headless Chromium through playwright-core, as a
// user would: clicks, typing, file picking, dialogs, downloads. Used by tests/browser.rs,
// which checks the store over the API afterwards, and by scripts/measure-page.sh.
//
// usage: node page.mjs <command> <base-url> [args...]; prints one JSON object on stdout.
//   upload   URL FILE...            pick the files, wait for every result row
//   browse   URL NAME_PART OUT_DIR  list, filter, search NAME_PART, open the newest
//                                   match's record, download it into OUT_DIR, delete it
//   token    URL TOKEN FILE OUT_DIR wrong token, right token, upload FILE, download it
//   measure  URL N FILE...          page weight, time to ready; the first N files
//                                   uploaded through the page, the rest in one multipart
//                                   request from the page (curl is timed by the caller)
// SCREENSHOTS=DIR saves a screenshot of each view at 1280 and 390 px wide.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [command, base, ...rest] = process.argv.slice(2);
if (!command || !base) {
  console.error('usage: node page.mjs upload|browse|token|measure <base-url> [args...]');
  process.exit(64);
}
const TIMEOUT_MS = 60_000;
const shots = process.env.SCREENSHOTS || '';

const user_data_dir = mkdtempSync(join(tmpdir(), 'rhinobox-page-'));
const context = await chromium.launchPersistentContext(user_data_dir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  acceptDownloads: true,
  viewport: { width: 1280, height: 860 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  timeout: TIMEOUT_MS,
});
context.setDefaultTimeout(TIMEOUT_MS);

// Every request the page makes, to prove none leaves the host and to weigh the page.
const requests = [];
context.on('request', (request) => requests.push(request.url()));
const console_errors = [];

async function open_page() {
  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console_errors.push(m.text()); });
  page.on('pageerror', (e) => console_errors.push(String(e)));
  await page.goto(base + '/');
  return page;
}

async function ready(page) {
  await page.waitForFunction(() => document.body.dataset.ready === '1');
}

/** Saves the current view at both widths (the dialog stays open across the resize). */
async function screenshot(page, name) {
  if (!shots) return;
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: width === 390 ? 844 : 860 });
    await page.waitForTimeout(150);
    await page.screenshot({ path: join(shots, `${name}-${width}.png`), fullPage: !name.includes('dialog') });
  }
  await page.setViewportSize({ width: 1280, height: 860 });
}

async function upload_through_page(page, files) {
  const before = await page.locator('#upload-list li').count();
  await page.setInputFiles('#file-input', files);
  await page.waitForFunction((n) => document.querySelector('#upload-summary').dataset.done
    === String(n) && document.querySelectorAll('#upload-list li').length >= n, files.length);
  const ms = Number(await page.locator('#upload-summary').getAttribute('data-ms'));
  const rows = await page.locator('#upload-list li').evaluateAll((items) => items.map((li) => ({
    name: li.querySelector('.name').textContent,
    state: li.className,
    hash: li.dataset.hash || null,
    result: li.querySelector('.result').textContent,
  })));
  return { rows: rows.slice(0, rows.length - before), ms };
}

function table_rows(page) {
  return page.locator('#files-table tbody tr').evaluateAll((rows) => rows.map((tr) => ({
    hash: tr.dataset.hash,
    name: tr.querySelector('.file-name').textContent,
    media_type: tr.querySelector('.badge').textContent,
  })));
}

async function wait_summary(page, text) {
  await page.waitForFunction((t) => document.querySelector('#files-summary').textContent
    .startsWith(t), text);
}

async function download_from(page, locator, out_dir) {
  const [download] = await Promise.all([page.waitForEvent('download'), locator.click()]);
  const path = join(out_dir, 'downloaded-' + download.suggestedFilename());
  await download.saveAs(path);
  return { path, suggested_name: download.suggestedFilename() };
}

async function upload(files) {
  const page = await open_page();
  await ready(page);
  const result = await upload_through_page(page, files);
  const distinct = new Set(result.rows.map((row) => row.hash).filter(Boolean)).size;
  await page.waitForFunction((n) => document.querySelectorAll('#files-table tbody tr').length
    >= n, Math.min(distinct, 50));
  await screenshot(page, 'upload');
  return { ...result, listed: await table_rows(page) };
}

async function browse(name_part, out_dir) {
  const page = await open_page();
  await ready(page);
  const result = { listed: await table_rows(page) };
  result.summary = await page.locator('#files-summary').textContent();
  await screenshot(page, 'files');

  await page.selectOption('#media-type', 'images');
  await page.waitForFunction(() => [...document.querySelectorAll('#files-table .badge')]
    .every((b) => b.textContent === 'images'));
  result.images = await table_rows(page);
  await page.selectOption('#media-type', '');

  // A category hint alone finds nothing; the page says why.
  await page.fill('#category', 'vacation');
  await page.press('#category', 'Enter');
  await wait_summary(page, '0 files');
  result.category_hint = await page.locator('#files-hint').textContent();
  result.category_hint_visible = await page.locator('#files-hint').isVisible();
  await page.fill('#category', '');
  await page.press('#category', 'Enter');

  // Search by typing, as a user does (the page waits for a pause in typing).
  await page.locator('#search').pressSequentially(name_part, { delay: 20 });
  await page.waitForFunction(() => / match/.test(document.querySelector('#files-summary')
    .textContent));
  result.search = await table_rows(page);
  result.search_summary = await page.locator('#files-summary').textContent();
  await screenshot(page, 'search');

  // The newest match's record, by keyboard: focus its name and press Enter.
  await page.locator('#files-table tbody tr').first().locator('.file-name').focus();
  await page.keyboard.press('Enter');
  await page.locator('#record-dialog[open]').waitFor();
  result.record = await page.locator('#record-fields').evaluate((dl) => {
    const out = {};
    const names = dl.querySelectorAll('dt');
    const values = dl.querySelectorAll('dd');
    names.forEach((dt, i) => { out[dt.textContent] = values[i].textContent; });
    return out;
  });
  // The preview is drawn from the stored bytes (fetched with the token when there is one).
  await page.waitForFunction(() => {
    const img = document.querySelector('#record-preview img');
    return img && img.complete && img.naturalWidth > 0;
  });
  result.preview_width = await page.locator('#record-preview img')
    .evaluate((img) => img.naturalWidth);
  await screenshot(page, 'record-dialog');
  result.download = await download_from(page, page.locator('#record-download'), out_dir);

  // Delete: the first click only asks; Cancel keeps the file; Delete removes it.
  await page.click('#record-delete');
  await page.locator('#confirm-dialog[open]').waitFor();
  result.confirm_text = await page.locator('#confirm-text').textContent();
  await screenshot(page, 'confirm-dialog');
  await page.click('#confirm-dialog button[value=cancel]');
  await page.locator('#confirm-dialog:not([open])').waitFor({ state: 'attached' });
  result.after_cancel = await table_rows(page);
  await page.click('#record-delete');
  await page.click('#confirm-delete');
  const deleted = result.search[0].hash;
  await page.waitForFunction((h) => !document.querySelector(`tr[data-hash="${h}"]`), deleted);
  result.deleted = deleted;
  result.after_delete = await table_rows(page);
  result.record_open_after_delete = await page.locator('#record-dialog[open]').count();

  await page.fill('#search', '');
  await page.locator('#stats').scrollIntoViewIfNeeded();
  await page.waitForFunction(() => document.querySelectorAll('#stats-types tbody tr').length > 0);
  result.stats = await page.locator('#stats-totals').innerText();
  await screenshot(page, 'stats');
  return result;
}

async function token(right_token, file, out_dir) {
  const page = await open_page();
  await page.locator('#token-panel').waitFor();
  await screenshot(page, 'token');
  const result = { app_hidden: await page.locator('#app').isHidden() };
  await page.fill('#token', 'wrong-' + right_token);
  await page.press('#token', 'Enter');
  await page.waitForFunction(() => document.querySelector('#token-error').textContent !== '');
  result.wrong_error = await page.locator('#token-error').textContent();
  result.app_hidden_after_wrong = await page.locator('#app').isHidden();
  await page.fill('#token', right_token);
  await page.press('#token', 'Enter');
  await ready(page);
  result.app_visible = await page.locator('#app').isVisible();
  result.upload = await upload_through_page(page, [file]);
  await page.waitForFunction(() => document.querySelectorAll('#files-table tbody tr').length > 0);
  result.download = await download_from(page,
    page.locator('#files-table tbody tr').first().locator('a'), out_dir);
  // Still signed in after a reload (same tab session), and the token can be forgotten.
  await page.reload();
  await ready(page);
  result.after_reload_visible = await page.locator('#app').isVisible();
  await page.click('#forget-token');
  result.after_forget_prompt = await page.locator('#token-panel').isVisible();
  return result;
}

async function measure(count, files) {
  const page = await open_page();
  await ready(page);
  const cold = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const mark = performance.getEntriesByName('rhinobox-ready')[0];
    const resources = performance.getEntriesByType('resource');
    return {
      dom_interactive_ms: nav.domInteractive,
      dom_content_loaded_ms: nav.domContentLoadedEventEnd,
      ready_ms: mark ? mark.startTime : null,
      html_bytes: nav.transferSize,
      html_body_bytes: nav.decodedBodySize,
      resources: resources.map((r) => ({ name: r.name, bytes: r.transferSize,
        body: r.decodedBodySize })),
    };
  });
  const timing = cold;
  // Again with a warm browser (cached, revalidated assets), as a returning user sees it.
  await page.reload();
  await ready(page);
  timing.warm = await page.evaluate(() => ({
    dom_interactive_ms: performance.getEntriesByType('navigation')[0].domInteractive,
    ready_ms: performance.getEntriesByName('rhinobox-ready')[0].startTime,
  }));
  // The first `count` files through the page (batches of multipart requests).
  const page_run = await upload_through_page(page, files.slice(0, count));
  // The other files in ONE multipart request from the page's context, as a page that
  // sent a whole selection at once would (no per-file progress or result until the end).
  await page.evaluate(() => {
    const input = document.createElement('input');
    input.type = 'file';
    input.multiple = true;
    input.id = 'measure-input';
    input.hidden = true;
    document.body.append(input);
  });
  await page.setInputFiles('#measure-input', files.slice(count));
  const multipart = await page.evaluate(async () => {
    const form = new FormData();
    for (const file of document.querySelector('#measure-input').files) form.append('file', file);
    const started = performance.now();
    const response = await fetch('/ingest/media', { method: 'POST', body: form });
    const body = await response.json();
    return { ms: performance.now() - started, status: response.status,
      stored: body.stored ? body.stored.length : 0 };
  });
  return { timing, page_upload_ms: page_run.ms, page_rows: page_run.rows.length,
    page_failed: page_run.rows.filter((r) => r.state.includes('failed')).length, multipart };
}

let output;
try {
  if (command === 'upload') output = await upload(rest);
  else if (command === 'browse') output = await browse(rest[0], rest[1]);
  else if (command === 'token') output = await token(rest[0], rest[1], rest[2]);
  else if (command === 'measure') output = await measure(Number(rest[0]), rest.slice(1));
  else throw new Error('unknown command ' + command);
  output.requests = requests;
  output.console_errors = console_errors;
  process.stdout.write(JSON.stringify(output) + '\n');
} finally {
  await context.close();
  rmSync(user_data_dir, { recursive: true, force: true });
}
