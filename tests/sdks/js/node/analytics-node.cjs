'use strict'
// @segment/analytics-node (Segment's Node SDK) sends the planned events to the host given,
// then prints what it sent and every HTTP answer it got.
// Usage: node analytics-node.cjs '{"host": "http://127.0.0.1:8000", "writeKey": "...", "rounds": 100}'
// With "context": {...}, every call passes it as its `context` (the SDK adds its `library`).
const { Analytics } = require('@segment/analytics-node')
const { plan, callArguments, printResult } = require('./plan.cjs')

async function main() {
  const config = JSON.parse(process.argv[2])
  const responses = []
  const errors = []

  // The SDK's own fetch-based client, wrapped so that every answer (and network error) is seen.
  const httpClient = {
    async makeRequest(options) {
      const events = JSON.parse(options.body).batch.length
      try {
        const response = await fetch(options.url, {
          method: options.method,
          headers: options.headers,
          body: options.body,
          signal: AbortSignal.timeout(options.httpRequestTimeout),
        })
        const body = await response.clone().text()
        responses.push({ url: options.url, status: response.status, events, body: body.slice(0, 500) })
        return response
      } catch (error) {
        responses.push({ url: options.url, status: null, events, error: String(error) })
        throw error
      }
    },
  }

  const analytics = new Analytics({
    writeKey: config.writeKey,
    host: config.host,
    flushAt: config.flushAt ?? 15,
    flushInterval: 200,
    maxRetries: 2,
    httpClient,
  })
  analytics.on('error', (error) => errors.push(String(error?.reason ?? error?.code ?? error)))

  const sent = plan(config.rounds)
  const delivered = sent.map(
    (event) =>
      new Promise((resolve) => {
        const args = config.context ? { ...callArguments(event), context: config.context } : callArguments(event)
        analytics[event.type](args, (error) => {
          if (error) errors.push(`${event.messageId}: ${error}`)
          resolve()
        })
      }),
  )
  await analytics.closeAndFlush({ timeout: 30000 })
  await Promise.all(delivered)
  printResult({ sdk: '@segment/analytics-node', sent, responses, errors })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
