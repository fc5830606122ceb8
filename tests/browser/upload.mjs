// Submits a real <form enctype=multipart/form-data> from headless Chromium and prints
// the daemon's JSON reply on stdout. Used by tests/clients.rs.
//
// usage: node upload.mjs <form.html> <file>...
// The page must hold a form with id "upload" and a file input named "file"; the files
// are attached with setInputFiles (as a user picking them would), the form is submitted
// and the body of the resulting page (Chromium shows JSON as text) is printed.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [page_path, ...files] = process.argv.slice(2);
if (!page_path || files.length === 0) {
  console.error('usage: node upload.mjs <form.html> <file>...');
  process.exit(64);
}

const user_data_dir = mkdtempSync(join(tmpdir(), 'rhinobox-chromium-'));
const context = await chromium.launchPersistentContext(user_data_dir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  timeout: 60_000,
});
try {
  const page = context.pages()[0] ?? await context.newPage();
  await page.goto(pathToFileURL(page_path).href);
  await page.setInputFiles('input[name=file]', files);
  await Promise.all([
    page.waitForNavigation({ timeout: 60_000 }),
    page.evaluate(() => document.getElementById('upload').submit()),
  ]);
  const text = await page.evaluate(() => document.body.innerText);
  process.stdout.write(text.trim() + '\n');
} finally {
  await context.close();
  rmSync(user_data_dir, { recursive: true, force: true });
}
