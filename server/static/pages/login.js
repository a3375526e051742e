// Log in (POST /api/v1/auth/login); the token goes to localStorage["shopcast.token"].
import { api, el, frame, message, saveSession } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("login");
const name = el("input", { id: "name", name: "name", autocomplete: "username", required: true });
const password = el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
const status = el("p", { role: "status", id: "status" });
const form = el("form", { class: "stack", id: "login-form" },
  el("label", { for: "name" }, t("name")), name,
  el("label", { for: "password" }, t("password")), password,
  el("button", { type: "submit", class: "primary" }, t("login")), status,
  el("a", { href: "/register" }, t("register")));
main.append(el("h1", {}, t("login")), form);
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    saveSession(await api("POST", "/api/v1/auth/login", { name: name.value, password: password.value }));
    message(status, t("logged_in"));
    const next = new URLSearchParams(location.search).get("next");
    location.href = next && next.startsWith("/") && !next.startsWith("//") ? next : "/";
  } catch (err) { message(status, `${t("error")}: ${err.message}`, "error"); }
});
