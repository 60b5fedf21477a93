// Scenarios the browser test drives (drive.cjs calls window.runScenario). Each loads
// analytics-next with the settings of docs/sdks.md's snippet (only `cdnURL` pointing at the
// ingest service), so the settings document and every event go there, and returns what it
// sent: [{messageId, type, ...fields}].
'use strict'

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// The six calls of one round; each resolves to analytics-next's Context of that event.
function round(analytics, i, tag) {
  return [
    analytics.page('Docs', 'Home', { path: '/home', i, tag }),
    analytics.identify(`user-${tag}-${i}`, { email: `u${i}@example.com`, plan: 'pro' }),
    analytics.track('Button Clicked', { i, tag, label: 'héllo ✓' }),
    analytics.group(`group-${i}`, { name: `Group ${i}`, employees: i }),
    analytics.screen('Settings', { tab: 'privacy', i }),
    analytics.alias(`user-${tag}-${i}-new`, `user-${tag}-${i}`),
  ]
}

function describe(ctx) {
  const event = ctx.event
  const sent = { messageId: event.messageId, type: event.type }
  for (const field of ['event', 'name', 'groupId', 'previousId']) {
    if (event[field] != null) sent[field] = event[field]
  }
  const failed = ctx.failedDelivery()
  if (failed) sent.failedDelivery = String(failed.reason)
  return sent
}

async function load(params, options) {
  const errors = []
  // params.settings: the settings of docs/sdks.md's snippet ({writeKey, cdnURL} pointing here).
  const [analytics] = await AnalyticsBrowser.load(params.settings, options)
  analytics.on('error', (error) => errors.push(String(error?.reason ?? error?.code ?? error)))
  return { analytics, errors }
}

// A tracking-API event posted by hand, as pages do on unload: the key in the body, since
// sendBeacon can set no header.
function handmade(params, event) {
  const body = {
    type: 'track',
    event,
    anonymousId: 'anon-handmade',
    messageId: crypto.randomUUID(),
    writeKey: params.writeKey,
    properties: { via: event },
  }
  const sent = { messageId: body.messageId, type: 'track', event, anonymousId: body.anonymousId }
  return { body: JSON.stringify(body), sent }
}

const scenarios = {
  // analytics.js's default delivery: one fetch per event to {apiHost}/{t,i,p,s,g,a}, as
  // text/plain with the key in HTTP Basic (a CORS preflight each). Then the unload paths a
  // page uses while it is still alive: sendBeacon and a keepalive fetch to /v1/t.
  async standard(params) {
    const { analytics, errors } = await load(params, {})
    const contexts = []
    for (let i = 0; i < params.rounds; i++) {
      contexts.push(...(await Promise.all(round(analytics, i, 'standard'))))
    }
    // analytics.js reports its own counters (its "remote metrics") every 30 s and at once
    // after an error counter; this one makes it report now, wherever the settings send them.
    contexts[0].stats.increment('analytics_js.invoke.error', 1, ['type:page'])

    const sent = contexts.map(describe)
    const beacon = handmade(params, 'Beacon Sent')
    if (!navigator.sendBeacon(`${params.cdn}/v1/t`, beacon.body)) errors.push('sendBeacon refused')
    const keepalive = handmade(params, 'Keepalive Sent')
    const answer = await fetch(`${params.cdn}/v1/t`, {
      method: 'POST',
      keepalive: true,
      body: keepalive.body,
    })
    sent.push(beacon.sent, keepalive.sent)
    return { sent, errors, keepaliveStatus: answer.status }
  },

  // deliveryStrategy "batching": events are buffered and posted to {apiHost}/b as
  // {batch, writeKey, sentAt}, when `size` are waiting or `timeout` ms after the first.
  async batching(params) {
    const size = 10
    const timeout = 300
    const { analytics, errors } = await load(params, {
      integrations: {
        'Segment.io': { deliveryStrategy: { strategy: 'batching', config: { size, timeout } } },
      },
    })
    const contexts = []
    for (let i = 0; i < params.rounds; i++) {
      contexts.push(...(await Promise.all(round(analytics, i, 'batching'))))
    }
    // A few more than fill whole batches: the last ones leave on the timeout.
    contexts.push(
      ...(await Promise.all([1, 2, 3].map((i) => analytics.track('Tail Event', { i })))),
    )
    await sleep(timeout + 200)
    return { sent: contexts.map(describe), errors }
  },

  // The page goes away with events still buffered: analytics.js's batching dispatcher posts
  // them on `pagehide` with keepalive, and the page's own pagehide handler sends a beacon and
  // a keepalive fetch. drive.cjs navigates away after this returns.
  async unload(params) {
    const { analytics, errors } = await load(params, {
      integrations: {
        'Segment.io': {
          deliveryStrategy: { strategy: 'batching', config: { size: 1000, timeout: 60000 } },
        },
      },
    })
    const contexts = []
    for (let i = 0; i < params.rounds; i++) {
      contexts.push(...(await Promise.all(round(analytics, i, 'unload'))))
    }
    const beacon = handmade(params, 'Unload Beacon')
    const keepalive = handmade(params, 'Unload Keepalive')
    window.addEventListener('pagehide', () => {
      navigator.sendBeacon(`${params.cdn}/v1/t`, beacon.body)
      fetch(`${params.cdn}/v1/t`, { method: 'POST', keepalive: true, body: keepalive.body })
    })
    return { sent: [...contexts.map(describe), beacon.sent, keepalive.sent], errors }
  },
}

window.runScenario = (name, params) => scenarios[name](params)
