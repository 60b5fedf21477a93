'use strict'
// The events every Node SDK script sends: `rounds` of each of the six Segment Spec types, in
// the field names both SDKs take (and the tracking API uses), each with its own messageId so
// the Python side can find it in the archive.
const { randomUUID } = require('node:crypto')

function plan(rounds) {
  const calls = []
  for (let i = 0; i < rounds; i++) {
    const user = `u${i}`
    const anon = `a-${i}`
    // Mostly known users; some anonymous; some with an empty userId beside an anonymousId,
    // as apps that reset their user send it.
    const who =
      i % 5 === 3 ? { anonymousId: anon } : i % 7 === 4 ? { userId: '', anonymousId: anon } : { userId: user }
    calls.push(
      ['track', { ...who, event: 'Order Completed', properties: { i, total: 12.5, sku: ['a', 'b'], note: 'héllo ✓' } }],
      ['identify', { ...who, traits: { email: `${user}@example.com`, plan: 'pro', nested: { a: { b: i } } } }],
      ['page', { ...who, name: 'Home', properties: { path: '/', i } }],
      ['screen', { ...who, name: 'Settings', properties: { tab: 'privacy', i } }],
      ['group', { ...who, groupId: `g${i % 10}`, traits: { name: `Group ${i % 10}`, employees: i } }],
      ['alias', { userId: user, previousId: anon }],
    )
  }
  return calls.map(([type, fields]) => ({ type, messageId: randomUUID(), ...fields }))
}

// The arguments a call takes: the planned event without its `type`.
function callArguments(event) {
  const { type, ...fields } = event
  return fields
}

function printResult(result) {
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`)
}

module.exports = { plan, callArguments, printResult }
