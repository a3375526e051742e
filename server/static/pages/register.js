// Register an account: the terms of service (GET /api/v1/terms) must be accepted.
import { api, el, frame, message } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("register");
const terms = await api("GET", "/api/v1/terms");
const field = (id, label, attrs = {}) => [el("label", { for: id }, t(label)), el("input", { id, name: id, ...attrs })];
const role = el("select", { id: "role", name: "role" },
  el("option", { value: "audience" }, t("viewer_role")), el("option", { value: "host" }, t("host_role")),
  el("option", { value: "marketer" }, t("marketer_role")));
const accept = el("input", { id: "accept_terms", name: "accept_terms", type: "checkbox", required: true });
const status = el("p", { role: "status", id: "status" });
const form = el("form", { class: "stack", id: "register-form" },
  ...field("name", "name", { required: true, autocomplete: "username", pattern: "[A-Za-z0-9_.\\-]+" }),
  ...field("password", "password", { type: "password", required: true, autocomplete: "new-password" }),
  ...field("display_name", "display_name"),
  el("label", { for: "role" }, t("role")), role,
  el("p", {}, el("a", { href: terms.url, id: "terms-link", target: "_blank", rel: "noopener" }, t("read_terms")),
    ` · ${t("terms_version")} `, el("span", { id: "terms-version" }, terms.version)),
  el("label", { class: "check" }, accept, " ", t("accept_terms")),
  el("button", { type: "submit", class: "primary" }, t("create_account")), status);
main.append(el("h1", {}, t("register")), form);
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { name: form.name.value, password: form.password.value, role: role.value,
    terms_version: terms.version, accept_terms: accept.checked };
  if (form.display_name.value) body.display_name = form.display_name.value;
  try {
    await api("POST", "/api/v1/accounts", body);
    message(status, t("registered"));
    status.append(" ", el("a", { href: "/login" }, t("login")));
  } catch (err) { message(status, `${t("error")}: ${err.message}${err.field ? ` (${err.field})` : ""}`, "error"); }
});
