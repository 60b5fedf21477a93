// The analytics.js bundle the browser test serves: @segment/analytics-next as an npm user
// bundles it, in one IIFE file (esbuild, no code splitting, so it loads no chunk from any CDN).
import { AnalyticsBrowser } from '@segment/analytics-next'

window.AnalyticsBrowser = AnalyticsBrowser
