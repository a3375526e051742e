// English and Chinese text for every page. The language is the one chosen with the switch
// (kept in localStorage["shopcast.lang"]), else the browser's first language.

import { storage } from "./storage.js";

const TEXT = {
  en: {
    brand: "shopcast", home: "Home", upcoming: "Upcoming", search: "Search", login: "Log in",
    logout: "Log out", register: "Register", profile: "Profile", orders: "My orders",
    language: "Language", live_now: "Live now", upcoming_rooms: "Upcoming rooms",
    no_rooms: "No rooms here yet.", watch: "Watch", starts: "Starts", demo_title: "Demo room",
    demo_desc: "A looping test pattern with a clock and a tone.",
    search_label: "Search rooms", search_button: "Search", results: "Results",
    unmute: "Unmute", mute: "Mute", viewers: "viewers", peak: "peak",
    no_webtransport: "This browser has no WebTransport, so it cannot play live video. Use a recent Chrome, Edge or Firefox.",
    connecting: "Connecting…", playing: "Live", offline: "The room is not live.",
    chat: "Chat", chat_input: "Message", send: "Send", emoji: "Emoji", emoji_picker: "Pick an emoji",
    reactions: "Reactions", login_to_chat: "Log in to chat.", chat_unavailable: "Chat is not available for this room.",
    share: "Share", copy_link: "Copy link", copied: "Link copied", host: "Host",
    products: "Products", buy_now: "Buy now", price: "Price", stock: "In stock", sold_out: "Sold out",
    flash_sale: "Flash sale", starts_in: "starts in", ends_in: "ends in", quantity: "Quantity", variant: "Variant",
    checkout: "Checkout", pay: "Go to payment", order: "Order", status: "Status", total: "Total",
    name: "Account name", password: "Password", role: "Account type", viewer_role: "Buyer / audience",
    host_role: "Host", marketer_role: "Marketer", display_name: "Display name", region: "Region",
    accept_terms: "I accept the terms of service", terms: "Terms of service",
    create_account: "Create account", registered: "Account created. You can log in now.",
    logged_in: "Logged in.", save: "Save", saved: "Saved.", not_logged_in: "You are not logged in.",
    no_orders: "No orders yet.", orders_unavailable: "Orders are not available on this server yet.",
    stats: "Statistics", stats_unavailable: "Statistics are not available on this server yet.",
    chart: "Chart", replay: "Replay", seek: "Seek (seconds)", go: "Go",
    error: "Error", muted_notice: "You are muted", held: "Your message waits for review.",
    embed_code: "Embed", fullscreen: "Room page", reply: "Reply",
    reaction_like: "Like", reaction_heart: "Heart", reaction_fire: "Fire", reaction_clap: "Clap", reaction_laugh: "Laugh",
    created: "Created", pending: "pending", paid: "paid", confirmed: "confirmed", shipped: "shipped",
    delivered: "delivered", completed: "completed", cancelled: "cancelled", refunded: "refunded",
    returned: "returned", expired: "expired", hold_expires: "Held until",
    follow: "Follow", following: "Following", followers: "followers", live_events: "live shows",
    cancel_reply: "Cancel the reply",
    datagram_mode: "Watch in datagram mode (lowest delay)", stream_mode: "Watch in stream mode",
    download_csv: "Download CSV", paid_at: "Paid at", tracking: "Tracking", back_to_room: "Back to the room",
    no_replay: "This room has not ended, so it has no replay yet.", to_live: "Go to the live room",
    ended_rooms: "Replays", recommended: "Recommended for you", hashtag: "Hashtag", host_name: "Host account name",
    from_date: "From", to_date: "To", state: "State", any_state: "Any", state_live: "Live", state_scheduled: "Scheduled",
    state_ended: "Ended", order_poll_stopped: "Reload the page for newer status.",
    read_terms: "Read the terms of service", terms_version: "Version",
    st_live: "Live", st_replay: "Replay (counted apart)", st_funnel: "AARRR funnel", st_timeline: "Timeline",
    st_audience: "Audience", st_commerce: "Sales",
    arrivals_n: "Arrivals (page opened)", shares_n: "Shares",
    peak_concurrent: "Peak concurrent viewers", unique_viewers: "Unique viewers", sessions: "Sessions",
    views: "Views (3 s or more)", average_watch_time_s: "Average watch time", chat_messages: "Chat messages",
    chatters: "Chatters", reactions_n: "Reactions", impressions: "Card impressions", clicks: "Card clicks",
    ctr: "Click-through rate", orders_n: "Orders", paid_orders: "Paid orders", click_to_order: "Click-to-order rate",
    gmv: "GMV", buyers: "Buyers", conversion_rate: "Conversion rate", refunded_orders: "Refunded orders",
    returned_orders: "Returned orders", refund_rate: "Refund rate", return_rate: "Return rate",
    acquisition: "Acquisition: arrivals", from_upcoming: "from the upcoming page", from_share: "from share links",
    from_direct: "direct", activation: "Activation: viewers past", retention: "Retention: returning viewers",
    referral: "Referral: shares", revenue: "Revenue", live_length: "Length of the live", started_at: "Started",
    ended_at: "Ended", download_json: "Download JSON", download_chart: "Download chart (SVG)",
    download_mp4: "Download recording (MP4)", download_chat: "Download chat (CSV)", downloads: "Downloads",
    seconds: "s", minutes_short: "min", bucket: "Minute", not_available: "—",
  },
  zh: {
    brand: "shopcast", home: "首页", upcoming: "即将开播", search: "搜索", login: "登录",
    logout: "退出登录", register: "注册", profile: "个人资料", orders: "我的订单",
    language: "语言", live_now: "正在直播", upcoming_rooms: "即将开播的直播间",
    no_rooms: "暂无直播间。", watch: "观看", starts: "开始时间", demo_title: "演示直播间",
    demo_desc: "循环播放的测试画面，带时钟和音调。",
    search_label: "搜索直播间", search_button: "搜索", results: "结果",
    unmute: "打开声音", mute: "静音", viewers: "人在看", peak: "峰值",
    no_webtransport: "此浏览器不支持 WebTransport，无法播放直播。请使用新版 Chrome、Edge 或 Firefox。",
    connecting: "连接中…", playing: "直播中", offline: "直播间未开播。",
    chat: "聊天", chat_input: "消息", send: "发送", emoji: "表情", emoji_picker: "选择表情",
    reactions: "互动", login_to_chat: "登录后即可聊天。", chat_unavailable: "此直播间暂不支持聊天。",
    share: "分享", copy_link: "复制链接", copied: "链接已复制", host: "主播",
    products: "商品", buy_now: "立即购买", price: "价格", stock: "库存", sold_out: "已售罄",
    flash_sale: "限时秒杀", starts_in: "距开始", ends_in: "距结束", quantity: "数量", variant: "规格",
    checkout: "结算", pay: "去支付", order: "订单", status: "状态", total: "合计",
    name: "账号名", password: "密码", role: "账号类型", viewer_role: "买家 / 观众",
    host_role: "主播", marketer_role: "营销人员", display_name: "昵称", region: "地区",
    accept_terms: "我已阅读并同意服务条款", terms: "服务条款",
    create_account: "创建账号", registered: "账号已创建，现在可以登录。",
    logged_in: "已登录。", save: "保存", saved: "已保存。", not_logged_in: "你尚未登录。",
    no_orders: "暂无订单。", orders_unavailable: "此服务器暂不支持订单。",
    stats: "数据统计", stats_unavailable: "此服务器暂不支持数据统计。",
    chart: "图表", replay: "回放", seek: "跳转（秒）", go: "跳转",
    error: "错误", muted_notice: "你已被禁言", held: "你的消息正在等待审核。",
    embed_code: "嵌入", fullscreen: "直播间页面", reply: "回复",
    reaction_like: "赞", reaction_heart: "爱心", reaction_fire: "火", reaction_clap: "鼓掌", reaction_laugh: "大笑",
    created: "创建时间", pending: "待支付", paid: "已支付", confirmed: "已确认", shipped: "已发货",
    delivered: "已送达", completed: "已完成", cancelled: "已取消", refunded: "已退款",
    returned: "已退货", expired: "已过期", hold_expires: "保留至",
    follow: "关注", following: "已关注", followers: "粉丝", live_events: "场直播",
    cancel_reply: "取消回复",
    datagram_mode: "数据报模式观看（延迟最低）", stream_mode: "流模式观看",
    download_csv: "下载 CSV", paid_at: "支付时间", tracking: "物流单号", back_to_room: "返回直播间",
    no_replay: "此直播间尚未结束，暂无回放。", to_live: "前往直播间",
    ended_rooms: "回放", recommended: "为你推荐", hashtag: "话题标签", host_name: "主播账号名",
    from_date: "起始", to_date: "截止", state: "状态", any_state: "全部", state_live: "直播中", state_scheduled: "已预约",
    state_ended: "已结束", order_poll_stopped: "刷新页面查看最新状态。",
    read_terms: "阅读服务条款", terms_version: "版本",
    st_live: "直播", st_replay: "回放（单独统计）", st_funnel: "AARRR 漏斗", st_timeline: "时间线",
    st_audience: "观众", st_commerce: "销售",
    arrivals_n: "到达（打开页面）", shares_n: "分享",
    peak_concurrent: "最高同时在线", unique_viewers: "独立观众", sessions: "观看次数",
    views: "有效观看（3 秒以上）", average_watch_time_s: "平均观看时长", chat_messages: "聊天消息",
    chatters: "发言人数", reactions_n: "互动", impressions: "商品卡曝光", clicks: "商品卡点击",
    ctr: "点击率", orders_n: "订单", paid_orders: "已支付订单", click_to_order: "点击下单率",
    gmv: "成交额（GMV）", buyers: "买家", conversion_rate: "转化率", refunded_orders: "退款订单",
    returned_orders: "退货订单", refund_rate: "退款率", return_rate: "退货率",
    acquisition: "获取：到访", from_upcoming: "来自预告页", from_share: "来自分享链接",
    from_direct: "直接访问", activation: "激活：观看超过", retention: "留存：回访观众",
    referral: "推荐：分享", revenue: "收入", live_length: "直播时长", started_at: "开始",
    ended_at: "结束", download_json: "下载 JSON", download_chart: "下载图表（SVG）",
    download_mp4: "下载录像（MP4）", download_chat: "下载聊天记录（CSV）", downloads: "下载",
    seconds: "秒", minutes_short: "分", bucket: "分钟", not_available: "—",
  },
};

export const LANGUAGES = { en: "English", zh: "中文" };

export function currentLanguage() {
  const chosen = storage.getItem("shopcast.lang");
  if (chosen && TEXT[chosen]) return chosen;
  for (const lang of navigator.languages || [navigator.language || "en"]) {
    const base = lang.toLowerCase().split("-")[0];
    if (TEXT[base]) return base;
  }
  return "en";
}

export function setLanguage(lang) {
  if (!TEXT[lang]) throw new Error(`no language ${lang}`);
  storage.setItem("shopcast.lang", lang);
}

/** The text for ``key`` in the current language (English, then the key, when missing). */
export function t(key) {
  const lang = currentLanguage();
  return TEXT[lang][key] ?? TEXT.en[key] ?? key;
}
