// Money is integer minor units of a currency (server/plugins: never floats). How many minor
// units make a major one depends on the currency (EUR 2, JPY 0, KWD 3): Intl knows.

/** The amount `minor` of `currency` as text in `locale` ("en", "zh-CN"). */
export function money(minor, currency = "USD", locale = "en") {
  if (minor === undefined || minor === null) return "–";
  try {
    const format = new Intl.NumberFormat(locale, { style: "currency", currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(minor / 10 ** digits);
  } catch {
    return `${minor} ${currency} (minor units)`;
  }
}
