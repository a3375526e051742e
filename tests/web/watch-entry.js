// Bundle entry for the browser interop test (tests/relay/test_moq_watch_chromium.py):
// registers the <moq-watch> custom element exactly as @moq/watch ships it. Nothing of the
// player is modified, wrapped or configured here; the page sets only element attributes.
import "@moq/watch/element";
