'use strict'
// Drives Debian's Chromium (headless, through playwright-core) over page.html: one fresh
// browser context per scenario of page.js, then prints what each scenario sent and every
// request the browser made, with its answer or failure.
// Usage: node drive.cjs '{"pageUrl": "...", "cdn": "...", "writeKey": "...",
//   "settings": {AnalyticsBrowser.load's settings}, "scenarios": [...], "userAgent": "..."}'
// `userAgent` (optional) is given to Chromium as its --user-agent flag, which changes
// navigator.userAgent and the User-Agent header but not the client hints
// (navigator.userAgentData still names Chromium on Linux). playwright's per-context
// `userAgent` would instead send hints it derives from the string (platform, no brands).
const { chromium } = require('playwright-core')

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

const SCENARIO_TIMEOUT_MS = 15000

// Wait until no request has been open for `quietMs`, or `maxMs` passed.
async function networkIdle(open, quietMs, maxMs) {
  const deadline = Date.now() + maxMs
  let quietSince = Date.now()
  while (Date.now() < deadline) {
    if (open.size > 0) quietSince = Date.now()
    else if (Date.now() - quietSince >= quietMs) return true
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return false
}

async function runScenario(browser, config, scenario, log) {
  const context = await browser.newContext()
  const open = new Set()
  const records = new Map()
  context.on('request', (request) => {
    open.add(request)
    records.set(request, {
      scenario: scenario.name,
      method: request.method(),
      url: request.url(),
      resourceType: request.resourceType(),
      contentType: request.headers()['content-type'] ?? null,
      status: null,
      failure: null,
    })
  })
  context.on('response', (response) => {
    const record = records.get(response.request())
    if (record) record.status = response.status()
  })
  context.on('requestfinished', (request) => open.delete(request))
  context.on('requestfailed', (request) => {
    open.delete(request)
    const record = records.get(request)
    if (record) record.failure = request.failure()?.errorText ?? 'failed'
  })

  const page = await context.newPage()
  page.on('console', (message) => {
    if (['error', 'warning'].includes(message.type())) {
      log.console.push({ scenario: scenario.name, type: message.type(), text: message.text() })
    }
  })
  page.on('pageerror', (error) => log.pageErrors.push({ scenario: scenario.name, error: String(error) }))

  await page.goto(config.pageUrl, { waitUntil: 'load', timeout: 10000 })
  const params = {
    cdn: config.cdn,
    writeKey: config.writeKey,
    settings: config.settings,
    rounds: scenario.rounds,
  }
  let result
  try {
    const run = page.evaluate(([name, args]) => window.runScenario(name, args), [scenario.name, params])
    const late = new Promise((resolve, reject) =>
      setTimeout(() => reject(new Error(`no result after ${SCENARIO_TIMEOUT_MS} ms`)), SCENARIO_TIMEOUT_MS).unref(),
    )
    result = await Promise.race([run, late])
  } catch (error) {
    // Keep going: the requests recorded so far are what tells why.
    result = { sent: [], errors: [`scenario failed: ${error.message ?? error}`] }
  }
  if (scenario.navigateAway) {
    // pagehide: what is still buffered leaves now, with keepalive or as a beacon.
    await page.goto(config.navigateAwayUrl, { waitUntil: 'load', timeout: 10000 })
    // Requests of a document that is gone are reported to no page (not even over CDP): give
    // them time to complete before the context closes. The test checks them in gunicorn's log.
    await page.waitForTimeout(1000)
  }
  result.networkIdle = await networkIdle(open, 500, 10000)
  await context.close()
  log.requests.push(...records.values())
  return result
}

async function main() {
  const config = JSON.parse(process.argv[2])
  const log = { scenarios: {}, requests: [], console: [], pageErrors: [] }
  const args = [...CHROMIUM_ARGS]
  if (config.userAgent) args.push(`--user-agent=${config.userAgent}`)
  const browser = await chromium.launch({
    executablePath: config.chromium,
    args,
    timeout: 15000,
  })
  try {
    for (const scenario of config.scenarios) {
      log.scenarios[scenario.name] = await runScenario(browser, config, scenario, log)
    }
  } finally {
    await browser.close()
  }
  process.stdout.write(`RESULT ${JSON.stringify(log)}\n`)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
