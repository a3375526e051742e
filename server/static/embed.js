// The embeddable player for platforms: on any site,
//   <script src="https://SHOPCAST/static/embed.js"></script>
//   <shopcast-live room="ROOM_ID"></shopcast-live>
// shows the room (video, cards, Buy Now, chat) in an iframe of /embed/ROOM_ID on the server this
// script came from (or the one named by the `server` attribute). A classic script, not a module,
// so that other origins can load it without CORS.
(() => {
  const scriptOrigin = document.currentScript ? new URL(document.currentScript.src).origin : location.origin;

  class ShopcastLive extends HTMLElement {
    static get observedAttributes() { return ["room", "server", "title"]; }

    connectedCallback() { this.render(); }

    attributeChangedCallback() { if (this.isConnected) this.render(); }

    render() {
      const room = this.getAttribute("room");
      if (!room) return;
      const server = this.getAttribute("server") || scriptOrigin;
      const src = `${server}/embed/${encodeURIComponent(room)}`;
      let frame = this.querySelector("iframe");
      if (!frame) {
        frame = document.createElement("iframe");
        frame.setAttribute("allow", "autoplay; fullscreen; clipboard-write");
        frame.style.cssText = "border:0;width:100%;height:100%;min-height:640px;display:block";
        this.append(frame);
      }
      frame.title = this.getAttribute("title") || `shopcast live room ${room}`;
      if (frame.src !== src) frame.src = src;
    }
  }

  if (!customElements.get("shopcast-live")) customElements.define("shopcast-live", ShopcastLive);
})();
