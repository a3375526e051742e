// Bundle entry for the viewer pages' player: registers the <moq-watch> custom element of
// @moq/watch (versions pinned by tests/web/package-lock.json). Built into
// server/static/vendor/moq-watch.js by `python -m shopcast.server._pages build` (see there).
import "@moq/watch/element";
