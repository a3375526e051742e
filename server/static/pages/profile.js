// The caller's profile (GET/PATCH /api/v1/me).
import { api, el, frame, message, token } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("profile");
main.append(el("h1", {}, t("profile")));
if (!token()) {
  main.append(el("p", {}, t("not_logged_in"), " ", el("a", { href: "/login?next=/profile" }, t("login"))));
} else {
  const me = await api("GET", "/api/v1/me");
  const displayName = el("input", { id: "display_name", value: me.display_name || "" });
  const region = el("input", { id: "region", value: me.region || "", maxlength: "2" });
  const status = el("p", { role: "status", id: "status" });
  const form = el("form", { class: "stack", id: "profile-form" },
    el("p", {}, t("name"), ": ", el("strong", { id: "account-name" }, me.name), " · ", me.role),
    el("label", { for: "display_name" }, t("display_name")), displayName,
    el("label", { for: "region" }, t("region")), region,
    el("button", { type: "submit", class: "primary" }, t("save")), status);
  main.append(form);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const changes = { display_name: displayName.value || null };
    if (region.value) changes.region = region.value.toUpperCase();
    try { await api("PATCH", "/api/v1/me", changes); message(status, t("saved")); }
    catch (err) { message(status, `${t("error")}: ${err.message}`, "error"); }
  });
}
