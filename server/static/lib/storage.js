// localStorage where the browser allows it, else memory for this page: an embedded page on
// another site may be refused storage (third-party storage blocking).
const memory = new Map();

function backing() {
  try {
    const store = globalThis.localStorage;
    store.getItem("shopcast.probe");
    return store;
  } catch {
    return null;
  }
}

const store = backing();

export const storage = {
  getItem: (key) => (store ? store.getItem(key) : memory.get(key) ?? null),
  setItem: (key, value) => (store ? store.setItem(key, value) : memory.set(key, String(value))),
  removeItem: (key) => (store ? store.removeItem(key) : memory.delete(key)),
};
