'use strict'
// @rudderstack/rudder-sdk-node (RudderStack's Node SDK, axios-based) sends the planned events
// to the host given, then prints what it sent and every HTTP answer it got.
//
// With `gzip` (its default) it posts the gzipped JSON as a bare Buffer, and axios labels that
// `Content-Type: application/x-www-form-urlencoded`; the responses record what was sent.
// Usage: node rudder-node.cjs '{"host": "http://127.0.0.1:8000", "writeKey": "...", "rounds": 100, "gzip": true}'
const Analytics = require('@rudderstack/rudder-sdk-node')
// The axios the SDK itself depends on, so the instance handed to it is of the same version.
const axios = require(require.resolve('axios', { paths: [require.resolve('@rudderstack/rudder-sdk-node')] }))
const { plan, callArguments, printResult } = require('./plan.cjs')

async function main() {
  const config = JSON.parse(process.argv[2])
  const responses = []
  const errors = []

  const axiosInstance = axios.create()
  const record = (response) => {
    const headers = response.config.headers
    responses.push({
      url: response.config.url,
      status: response.status,
      contentType: headers.get('Content-Type') ?? null,
      contentEncoding: headers.get('Content-Encoding') ?? null,
      body: JSON.stringify(response.data).slice(0, 500),
    })
  }
  // Every attempt (axios-retry re-sends through the same instance) passes here.
  axiosInstance.interceptors.response.use(
    (response) => {
      record(response)
      return response
    },
    (error) => {
      if (error.response) record(error.response)
      else responses.push({ url: error.config?.url, status: null, error: String(error) })
      return Promise.reject(error)
    },
  )

  const client = new Analytics(config.writeKey, {
    dataPlaneUrl: config.host,
    flushAt: config.flushAt ?? 20,
    flushInterval: 200,
    gzip: config.gzip,
    retryCount: 2,
    logLevel: 'error',
    axiosInstance,
    errorHandler: (error) => errors.push(`errorHandler: ${error}`),
  })

  const sent = plan(config.rounds)
  const delivered = sent.map(
    (event) =>
      new Promise((resolve) => {
        client[event.type](callArguments(event), (error) => {
          if (error) errors.push(`${event.messageId}: ${error}`)
          resolve()
        })
      }),
  )
  // flush() sends at most flushAt events at a time: repeat until the queue is empty.
  while (client.queue.length > 0) await client.flush()
  await Promise.all(delivered)
  printResult({ sdk: '@rudderstack/rudder-sdk-node', sent, responses, errors })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
