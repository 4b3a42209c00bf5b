/*
 * tuneloop chat widget: streaming answers with thumbs up/down on every answer.
 *
 * Embed with one tag (see docs/widget.md):
 *   <script src="https://GATEWAY/widget.js" data-key="tl_pk_..." data-lang="en" data-title="Support" async></script>
 *
 * Attributes: data-gateway (default: where this file came from), data-key (a publishable
 * key), data-lang ("en" | "ko"; default: the browser's language), data-title, and the
 * optional data-mode ("bubble", default: a launcher button in the corner; "page": fills
 * the element named by data-target, or sits where the tag is; "manual": nothing until the
 * page calls Tuneloop.mount(element, options)), data-target, data-accent (a CSS colour).
 *
 * Safety rules this file keeps: every piece of model output and user text reaches the
 * DOM through textContent/createTextNode, never innerHTML — a model that answers
 * "<img src=x onerror=...>" shows those characters. Answers are Markdown, rendered by the
 * small renderer below into elements it creates itself (paragraphs, lists, emphasis, code,
 * links): raw HTML in an answer stays text, and a link is made only for http(s) and mailto
 * URLs, opening in a new tab with rel="noopener noreferrer nofollow". The knowledge-base
 * entries an answer was built on are listed under it, collapsed (a <details> element). Everything lives in a Shadow DOM so
 * the host page's CSS cannot break the widget and the widget's CSS cannot leak out.
 * No build step and no dependencies: this file is what browsers run.
 */
(function () {
  "use strict";

  var STRINGS = {
    en: {
      title: "Support",
      subtitle: "Answered by AI · your ratings help",
      greeting: "Hi! How can we help you today?",
      placeholder: "Type your message…",
      send: "Send",
      open: "Open chat",
      close: "Close chat",
      you: "You",
      assistant: "Assistant",
      messages: "Conversation",
      typing: "Typing…",
      helpful: "Was this helpful?",
      up: "Good answer",
      down: "Bad answer",
      reasonLegend: "What went wrong?",
      comment: "Comment (optional)",
      correction: "What would the right answer have been? (optional)",
      submit: "Send feedback",
      cancel: "Cancel",
      thanks: "Thanks for your feedback!",
      voteFailed: "Your rating could not be saved: ",
      cut: "The answer was interrupted.",
      network: "Could not reach the chat service. Check your connection and try again.",
      notAllowed: "This website is not allowed to use this chat service. The service's administrator must add it to the allowed origins.",
      limited: "Too many messages right now. Please wait a moment and try again.",
      failed: "Something went wrong: ",
      poweredBy: "Powered by tuneloop",
      sources: "Sources",
      forget: "Delete this conversation",
      forgetAsk: "Delete this conversation, with your ratings and comments, from our records? This cannot be undone.",
      forgetYes: "Delete",
      forgotten: "The conversation was deleted.",
      forgetFailed: "The conversation could not be deleted: ",
      reasons: { wrong: "Wrong", incomplete: "Incomplete", unhelpful: "Not helpful", outdated: "Out of date", other: "Other" },
    },
    ko: {
      title: "고객 지원",
      subtitle: "AI가 답변합니다 · 평가로 개선에 참여해 주세요",
      greeting: "안녕하세요! 무엇을 도와드릴까요?",
      placeholder: "메시지를 입력하세요…",
      send: "보내기",
      open: "채팅 열기",
      close: "채팅 닫기",
      you: "나",
      assistant: "상담원",
      messages: "대화",
      typing: "입력 중…",
      helpful: "도움이 되었나요?",
      up: "좋은 답변",
      down: "아쉬운 답변",
      reasonLegend: "어떤 점이 아쉬웠나요?",
      comment: "의견 (선택)",
      correction: "올바른 답변은 무엇이었을까요? (선택)",
      submit: "피드백 보내기",
      cancel: "취소",
      thanks: "소중한 의견 감사합니다!",
      voteFailed: "평가를 저장하지 못했습니다: ",
      cut: "답변이 중간에 끊겼습니다.",
      network: "채팅 서비스에 연결할 수 없습니다. 연결을 확인하고 다시 시도해 주세요.",
      notAllowed: "이 웹사이트는 이 채팅 서비스를 사용하도록 허용되지 않았습니다. 서비스 관리자가 허용 목록에 추가해야 합니다.",
      limited: "요청이 너무 많습니다. 잠시 후 다시 시도해 주세요.",
      failed: "문제가 발생했습니다: ",
      poweredBy: "Powered by tuneloop",
      sources: "출처",
      forget: "이 대화 삭제",
      forgetAsk: "이 대화와 평가, 의견을 기록에서 삭제할까요? 되돌릴 수 없습니다.",
      forgetYes: "삭제",
      forgotten: "대화가 삭제되었습니다.",
      forgetFailed: "대화를 삭제하지 못했습니다: ",
      reasons: { wrong: "틀린 답변", incomplete: "불완전함", unhelpful: "도움이 안 됨", outdated: "오래된 정보", other: "기타" },
    },
  };

  // Used until GET /api/config answers (and if it never does).
  var DEFAULT_CONFIG = {
    reasons: ["wrong", "incomplete", "unhelpful", "outdated", "other"],
    max_message_chars: 4000,
    max_comment_chars: 2000,
    max_correction_chars: 4000,
  };

  // Material icon paths (Apache-2.0), drawn with createElementNS: no markup strings anywhere.
  var ICONS = {
    chat: "M20 2H4c-1.1 0-1.99.9-1.99 2L2 22l4-4h14c1.1 0 2-.9 2-2V4c0-1.1-.9-2-2-2zM6 9h12v2H6V9zm8 5H6v-2h8v2zm4-6H6V6h12v2z",
    close: "M19 6.41 17.59 5 12 10.59 6.41 5 5 6.41 10.59 12 5 17.59 6.41 19 12 13.41 17.59 19 19 17.59 13.41 12z",
    send: "M2.01 21 23 12 2.01 3 2 10l15 2-15 2z",
    up: "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z",
    trash: "M6 19c0 1.1.9 2 2 2h8c1.1 0 2-.9 2-2V7H6v12zM19 4h-3.5l-1-1h-5l-1 1H5v2h14V4z",
    down: "M15 3H6c-.83 0-1.54.5-1.84 1.22l-3.02 7.05c-.09.23-.14.47-.14.73v2c0 1.1.9 2 2 2h6.31l-.95 4.57-.03.32c0 .41.17.79.44 1.06L9.83 23l6.59-6.59c.36-.36.58-.86.58-1.41V5c0-1.1-.9-2-2-2zm4 0v12h4V3h-4z",
  };

  var STYLE = [
    ":host{all:initial;display:block}",
    ":host([data-mode=page]){height:100%}",
    ".tl{--accent:#4f46e5;--accent-soft:#eef2ff;--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;",
    "font-family:ui-sans-serif,system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans KR','Apple SD Gothic Neo','Malgun Gothic','NanumGothic',sans-serif;",
    "font-size:14px;line-height:1.5;color:var(--ink);-webkit-font-smoothing:antialiased;height:100%}",
    ".tl *,.tl *::before,.tl *::after{box-sizing:border-box}",
    ".sr{position:absolute;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;clip:rect(0,0,0,0);white-space:nowrap;border:0}",
    "button,textarea,input{font:inherit;color:inherit}",
    ":focus-visible{outline:2px solid var(--accent);outline-offset:2px}",
    "svg{width:20px;height:20px;fill:currentColor;display:block}",
    ".launcher{position:fixed;right:20px;bottom:20px;width:58px;height:58px;border-radius:50%;border:0;background:var(--accent);color:#fff;",
    "box-shadow:0 10px 28px rgba(15,23,42,.25);cursor:pointer;display:flex;align-items:center;justify-content:center;z-index:2147483000;transition:transform .15s}",
    ".launcher:hover{transform:scale(1.05)}.launcher svg{width:26px;height:26px}",
    ".panel{display:flex;flex-direction:column;background:#fff;border-radius:18px;overflow:hidden;border:1px solid var(--line)}",
    ".panel[hidden]{display:none}",
    ".bubble .panel{position:fixed;right:20px;bottom:92px;width:380px;height:640px;max-width:calc(100vw - 40px);max-height:calc(100vh - 112px);",
    "z-index:2147483000;box-shadow:0 18px 50px rgba(15,23,42,.22)}",
    ".page .panel{width:100%;height:100%;min-height:420px;box-shadow:0 4px 18px rgba(15,23,42,.08)}",
    ".head{display:flex;align-items:center;gap:12px;padding:16px 18px;background:var(--accent);color:#fff;",
    "background-image:linear-gradient(135deg,rgba(255,255,255,.14),rgba(255,255,255,0))}",
    ".avatar{width:38px;height:38px;border-radius:50%;background:rgba(255,255,255,.2);display:flex;align-items:center;justify-content:center;flex:none}",
    ".head h2{margin:0;font-size:16px;font-weight:650;line-height:1.3}",
    ".head p{margin:2px 0 0;font-size:12px;opacity:.85}",
    ".head .titles{flex:1;min-width:0}",
    ".icon-btn{border:0;background:transparent;color:inherit;width:34px;height:34px;border-radius:10px;cursor:pointer;display:flex;align-items:center;justify-content:center}",
    ".head .icon-btn:hover{background:rgba(255,255,255,.18)}",
    ".log{flex:1;overflow-y:auto;padding:18px 16px;background:#f8fafc}",
    ".thread{margin:0;padding:0;list-style:none;display:flex;flex-direction:column;gap:14px}",
    ".msg{display:flex;flex-direction:column;max-width:86%}",
    ".msg.user{align-self:flex-end;align-items:flex-end}",
    ".msg.assistant{align-self:flex-start}",
    ".msg.assistant:has(.fb){align-self:stretch;max-width:100%}",
    ".msg.assistant:has(.fb) .text{align-self:flex-start;max-width:86%}",
    ".text{white-space:pre-wrap;overflow-wrap:anywhere;padding:10px 14px;border-radius:18px}",
    ".user .text{background:var(--accent);color:#fff;border-bottom-right-radius:6px}",
    ".assistant .text{background:#fff;border:1px solid var(--line);border-bottom-left-radius:6px;box-shadow:0 1px 2px rgba(15,23,42,.04)}",
    ".text:empty::after{content:'';display:inline-block;width:28px;height:8px;",
    "background:radial-gradient(circle,var(--muted) 3px,transparent 3.5px) 0 0/10px 8px repeat-x;opacity:.5;animation:tlpulse 1s infinite}",
    "@keyframes tlpulse{50%{opacity:.15}}",
    ".rate{display:flex;align-items:center;gap:2px;margin-top:4px;padding-left:4px;font-size:12px;color:var(--muted)}",
    ".rate .label{margin-right:4px}",
    ".thumb{border:1px solid transparent;background:transparent;color:#94a3b8;width:30px;height:30px;border-radius:9px;cursor:pointer;display:flex;align-items:center;justify-content:center}",
    ".thumb svg{width:16px;height:16px}",
    ".thumb:hover{background:var(--accent-soft);color:var(--accent)}",
    ".thumb[aria-pressed=true]{background:var(--accent-soft);color:var(--accent);border-color:#c7d2fe}",
    ".thumb.down[aria-pressed=true]{background:#fef2f2;color:#dc2626;border-color:#fecaca}",
    ".thumb:disabled{cursor:progress}",
    ".note{font-size:12px;color:var(--muted);margin-top:4px;padding-left:4px}",
    ".fb{margin-top:8px;background:#fff;border:1px solid var(--line);border-radius:14px;padding:12px;width:100%;display:flex;flex-direction:column;gap:10px}",
    ".fb fieldset{border:0;margin:0;padding:0}",
    ".fb legend,.fb label.field{font-size:12px;font-weight:600;color:#334155;margin-bottom:6px;padding:0;display:block}",
    ".chips{display:flex;flex-wrap:wrap;gap:6px}",
    ".chip{position:relative}",
    ".chip input{position:absolute;opacity:0;width:1px;height:1px}",
    ".chip span{display:inline-block;padding:4px 11px;border:1px solid #cbd5e1;border-radius:999px;font-size:12px;cursor:pointer;background:#fff}",
    ".chip input:checked+span{background:var(--accent);border-color:var(--accent);color:#fff}",
    ".chip input:focus-visible+span{outline:2px solid var(--accent);outline-offset:2px}",
    ".fb textarea{width:100%;resize:vertical;min-height:44px;border:1px solid #cbd5e1;border-radius:10px;padding:7px 10px;font-size:13px;background:#fff}",
    ".fb textarea:focus{border-color:var(--accent);outline:none;box-shadow:0 0 0 3px var(--accent-soft)}",
    ".actions{display:flex;justify-content:flex-end;gap:8px}",
    ".btn{border-radius:10px;padding:7px 14px;font-size:13px;font-weight:600;cursor:pointer;border:1px solid transparent}",
    ".btn.primary{background:var(--accent);color:#fff}",
    ".btn.ghost{background:transparent;color:var(--muted);border-color:var(--line)}",
    ".error{color:#b91c1c;background:#fef2f2;border:1px solid #fecaca;border-radius:12px;padding:8px 12px;font-size:13px;margin-top:6px}",
    ".banner{margin:0;border-radius:0;border-width:0 0 1px}",
    ".head .icon-btn[hidden]{display:none}",
    ".forget{display:flex;flex-wrap:wrap;align-items:center;gap:8px;padding:10px 14px;background:#fffbeb;border-bottom:1px solid #fcd34d;font-size:13px}",
    ".forget[hidden]{display:none}.forget span{flex:1 1 200px}",
    ".status{margin:0;padding:8px 14px;font-size:13px;color:#166534;background:#f0fdf4;border-bottom:1px solid #bbf7d0}.status[hidden]{display:none}",
    ".composer{display:flex;align-items:flex-end;gap:8px;padding:12px;border-top:1px solid var(--line);background:#fff}",
    ".composer textarea{flex:1;resize:none;border:1px solid #cbd5e1;border-radius:14px;padding:10px 14px;max-height:140px;min-height:44px;line-height:1.45;background:#fff}",
    ".composer textarea:focus{border-color:var(--accent);outline:none;box-shadow:0 0 0 3px var(--accent-soft)}",
    ".send{width:44px;height:44px;border-radius:50%;border:0;background:var(--accent);color:#fff;cursor:pointer;display:flex;align-items:center;justify-content:center;flex:none}",
    ".send:disabled{opacity:.45;cursor:default}",
    ".foot{text-align:center;font-size:11px;color:var(--muted);padding:0 0 8px;background:#fff}",
    ".text.md{white-space:normal}",
    ".md p{margin:0 0 .6em}.md>:last-child{margin-bottom:0}",
    ".md ul,.md ol{margin:.2em 0 .6em;padding-left:1.4em}.md li{margin:.1em 0}",
    ".md h3,.md h4,.md h5,.md h6{font-size:1em;font-weight:650;margin:.2em 0 .4em}.md h3{font-size:1.08em}",
    ".md code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;background:#f1f5f9;border-radius:4px;padding:0 .25em}",
    ".md pre{margin:0 0 .6em;padding:8px 10px;background:#f1f5f9;border-radius:8px;overflow-x:auto;white-space:pre}.md pre code{background:none;padding:0}",
    ".md blockquote{margin:0 0 .6em;padding-left:10px;border-left:3px solid var(--line);color:#334155}",
    ".md hr{border:0;border-top:1px solid var(--line);margin:.6em 0}",
    ".md a{color:var(--accent);text-decoration:underline}",
    ".sources{margin-top:4px;padding-left:4px;font-size:12px;color:var(--muted);max-width:86%}",
    ".sources summary{cursor:pointer;width:max-content;border-radius:6px;padding:1px 4px}",
    ".sources summary:hover{color:var(--accent)}",
    ".sources ol{margin:4px 0 2px;padding-left:1.6em}.sources li{margin:2px 0;overflow-wrap:anywhere}",
  ].join("\n");

  // --- small DOM helpers: text only, attributes via setAttribute --------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    var name;
    for (name in attrs || {}) {
      if (attrs[name] === true) node.setAttribute(name, "");
      else if (attrs[name] !== false && attrs[name] != null) node.setAttribute(name, String(attrs[name]));
    }
    (children || []).forEach(function (child) {
      if (child === "") return; // keeps an empty bubble :empty, which draws the typing dots
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function icon(name) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", ICONS[name]);
    svg.appendChild(path);
    return svg;
  }

  function pickLang(value) {
    var lang = (value || navigator.language || "en").toLowerCase();
    return lang.indexOf("ko") === 0 ? "ko" : "en";
  }

  // One random id per browser (per host site), so a voter can change a vote instead of adding one.
  function voterId() {
    var storageKey = "tuneloop.voter";
    var id = null;
    try {
      id = window.localStorage.getItem(storageKey);
    } catch (e) {
      /* storage blocked (private mode, sandboxed frame): an id for this page view only */
    }
    if (!id || !/^v_[A-Za-z0-9-]{8,64}$/.test(id)) {
      id = "v_" + (window.crypto && crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now());
      try {
        window.localStorage.setItem(storageKey, id);
      } catch (e) {
        /* see above */
      }
    }
    return id;
  }

  // --- a small, safe Markdown renderer: elements it makes itself, text as text ------------

  var SAFE_PROTOCOLS = { "http:": true, "https:": true, "mailto:": true };
  // Inline rules, earliest match wins (ties: the first rule). Underscore emphasis is left alone inside
  // words (snake_case, __proto__) and an unclosed marker is just a character.
  var INLINE = [
    ["escape", /\\([\\`*_{}\[\]()#+\-.!~>|])/],
    ["code", /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/],
    ["link", /\[([^\[\]\n]+)\]\(\s*([^\s()<>]+)(?:\s+"[^"\n]*")?\s*\)/],
    ["url", /(?:https?:\/\/|mailto:)[^\s<>"'`]*[^\s<>"'`.,;:!?)\]]/],
    ["strong", /\*\*(?=\S)([\s\S]*?\S)\*\*|(?<![\p{L}\p{N}_])__(?=\S)([\s\S]*?\S)__(?![\p{L}\p{N}_])/u],
    ["em", /\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)|(?<![\p{L}\p{N}_])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\p{L}\p{N}_])/u],
    ["del", /~~(?=\S)([\s\S]*?\S)~~/],
  ];
  var MAX_DEPTH = 6;

  /** The URL if it is an absolute http(s) or mailto one, else null (javascript:, data:, relative…). */
  function safeUrl(raw) {
    try {
      var url = new URL(raw);
      return SAFE_PROTOCOLS[url.protocol] ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function link(href, children) {
    var url = safeUrl(href);
    if (!url) return el("span", {}, children);
    return el("a", { href: url, target: "_blank", rel: "noopener noreferrer nofollow" }, children);
  }

  /** Append ``text`` to ``parent`` with inline Markdown (code, links, emphasis) as elements. */
  function inline(text, parent, depth) {
    while (text) {
      var best = null;
      var rule = null;
      for (var r = 0; r < INLINE.length; r++) {
        var m = INLINE[r][1].exec(text);
        if (m && (!best || m.index < best.index)) {
          best = m;
          rule = INLINE[r][0];
        }
      }
      if (!best) break;
      if (best.index) parent.appendChild(document.createTextNode(text.slice(0, best.index)));
      text = text.slice(best.index + best[0].length);
      var inner = best[2] !== undefined && rule !== "code" && rule !== "link" ? best[2] : best[1];
      if (rule === "escape") parent.appendChild(document.createTextNode(best[1]));
      else if (rule === "code") parent.appendChild(el("code", {}, [best[2]]));
      else if (rule === "url") parent.appendChild(link(best[0], [best[0]]));
      else if (depth >= MAX_DEPTH) parent.appendChild(document.createTextNode(best[0]));
      else if (rule === "link") {
        var label = document.createDocumentFragment();
        inline(best[1], label, depth + 1);
        parent.appendChild(link(best[2], [label]));
      } else {
        var node = el(rule === "strong" ? "strong" : rule === "em" ? "em" : "del", {});
        inline(inner, node, depth + 1);
        parent.appendChild(node);
      }
    }
    if (text) parent.appendChild(document.createTextNode(text));
  }

  /** Inline Markdown over several lines, the line breaks kept. */
  function inlineLines(lines, parent) {
    lines.forEach(function (line, i) {
      if (i) parent.appendChild(el("br", {}));
      inline(line, parent, 0);
    });
    return parent;
  }

  var FENCE = /^ {0,3}(`{3,}|~{3,})/;
  var HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
  var RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  var QUOTE = /^ {0,3}> ?/;
  var ITEM = /^ {0,3}([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
  }

  /** A DocumentFragment for Markdown ``source``: paragraphs, headings, lists, quotes, code, rules. */
  function renderMarkdown(source, depth) {
    depth = depth || 0;
    var out = document.createDocumentFragment();
    var lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      if (!line.trim()) {
        i++;
        continue;
      }
      var fence = FENCE.exec(line);
      if (fence) {
        var code = [];
        for (i++; i < lines.length && lines[i].trim().indexOf(fence[1]) !== 0; i++) code.push(lines[i]);
        i++; // the closing fence (or the end of an answer still streaming)
        out.appendChild(el("pre", {}, [el("code", {}, [code.join("\n")])]));
        continue;
      }
      var heading = HEADING.exec(line);
      if (heading) {
        out.appendChild(inlineLines([heading[2]], el("h" + Math.min(6, heading[1].length + 2), {})));
        i++;
        continue;
      }
      if (RULE.test(line)) {
        out.appendChild(el("hr", {}));
        i++;
        continue;
      }
      if (QUOTE.test(line) && depth < MAX_DEPTH) {
        var quoted = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) quoted.push(lines[i].replace(QUOTE, ""));
        var quote = el("blockquote", {});
        quote.appendChild(renderMarkdown(quoted.join("\n"), depth + 1));
        out.appendChild(quote);
        continue;
      }
      var item = ITEM.exec(line);
      if (item) {
        var ordered = /\d/.test(item[1]);
        var list = el(ordered ? "ol" : "ul", {});
        if (ordered && parseInt(item[1], 10) !== 1) list.setAttribute("start", String(parseInt(item[1], 10)));
        while (i < lines.length) {
          var next = ITEM.exec(lines[i]);
          if (!next || /\d/.test(next[1]) !== ordered) break;
          var body = [next[2]];
          // Continuation lines: indented, not blank, not a new item.
          for (i++; i < lines.length && /^[ \t]+\S/.test(lines[i]) && !ITEM.exec(lines[i]); i++) body.push(lines[i].trim());
          list.appendChild(inlineLines(body, el("li", {})));
        }
        out.appendChild(list);
        continue;
      }
      var paragraph = [];
      for (; i < lines.length && lines[i].trim() && (!paragraph.length || !startsBlock(lines[i])); i++) paragraph.push(lines[i]);
      out.appendChild(inlineLines(paragraph, el("p", {})));
    }
    return out;
  }

  // --- the wire: JSON errors and server-sent events over fetch --------------------------

  function ApiError(code, message, status) {
    this.code = code;
    this.message = message;
    this.status = status;
  }

  async function errorFrom(response) {
    try {
      var body = await response.json();
      if (body && body.error) return new ApiError(body.error.code, body.error.message, response.status);
    } catch (e) {
      /* not our JSON: fall through */
    }
    return new ApiError("http_" + response.status, "HTTP " + response.status, response.status);
  }

  // EventSource cannot POST, so the stream is read by hand: blocks end with a blank line.
  async function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
      var end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        var block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        var event = "message";
        var data = [];
        block.split("\n").forEach(function (line) {
          if (line.indexOf("event:") === 0) event = line.slice(6).trim();
          else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
        });
        if (data.length) onEvent(event, JSON.parse(data.join("\n")));
      }
    }
  }

  // --- the widget ------------------------------------------------------------------------

  function Widget(host, options) {
    this.host = host;
    this.gateway = options.gateway.replace(/\/+$/, "");
    this.key = options.key || "";
    this.lang = pickLang(options.lang);
    this.t = STRINGS[this.lang];
    this.title = options.title || this.t.title;
    this.mode = options.mode === "page" ? "page" : "bubble";
    this.config = DEFAULT_CONFIG;
    this.voter = voterId();
    this.conversationId = null;
    this.proof = null; // the newest answer's id and feedback token: what proves this conversation is ours
    this.busy = false;
    host.setAttribute("data-mode", this.mode);
    host.setAttribute("lang", this.lang);
    this.root = host.attachShadow({ mode: "open" });
    this.render(options.accent);
    this.loadConfig();
  }

  Widget.prototype.headers = function () {
    var headers = { "Content-Type": "application/json", "X-Tuneloop-Client": "widget" };
    if (this.key) headers.Authorization = "Bearer " + this.key;
    return headers;
  };

  Widget.prototype.request = function (path, body, method) {
    return fetch(this.gateway + path, {
      method: method || (body ? "POST" : "GET"),
      headers: this.headers(),
      body: body ? JSON.stringify(body) : undefined,
      credentials: "omit",
      cache: "no-store",
    });
  };

  // fetch() gives the same TypeError for "server down" and "CORS refused"; an opaque
  // no-cors probe tells them apart, so the user sees which one it is.
  Widget.prototype.diagnose = async function () {
    try {
      await fetch(this.gateway + "/healthz", { mode: "no-cors", cache: "no-store", credentials: "omit" });
      return new ApiError("origin_not_allowed", this.t.notAllowed, 0);
    } catch (e) {
      return new ApiError("network", this.t.network, 0);
    }
  };

  Widget.prototype.call = async function (path, body, method) {
    var response;
    try {
      response = await this.request(path, body, method);
    } catch (e) {
      throw await this.diagnose();
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  };

  Widget.prototype.explain = function (error) {
    if (!(error instanceof ApiError)) return this.t.failed + String(error && error.message ? error.message : error);
    if (error.code === "origin_not_allowed") return this.t.notAllowed + " (" + window.location.origin + ")";
    if (error.code === "network") return this.t.network;
    if (error.status === 429) return this.t.limited;
    return this.t.failed + error.message;
  };

  Widget.prototype.loadConfig = async function () {
    try {
      var response = await this.call("/api/config");
      var config = await response.json();
      if (config && Array.isArray(config.reasons)) {
        this.config = config;
        this.input.maxLength = config.max_message_chars || DEFAULT_CONFIG.max_message_chars;
      }
    } catch (error) {
      this.showBanner(this.explain(error));
    }
  };

  Widget.prototype.render = function (accent) {
    var t = this.t;
    var self = this;
    var style = el("style", {}, [STYLE]);
    var wrap = el("div", { class: "tl " + this.mode, part: "widget" });
    if (accent && window.CSS && CSS.supports("color", accent)) wrap.style.setProperty("--accent", accent);

    var panelId = "tl-panel";
    this.panel = el("section", { class: "panel", id: panelId, role: this.mode === "bubble" ? "dialog" : "region", "aria-label": this.title });
    var head = el("div", { class: "head" }, [
      el("div", { class: "avatar" }, [icon("chat")]),
      el("div", { class: "titles" }, [el("h2", {}, [this.title]), el("p", {}, [t.subtitle])]),
    ]);
    this.panel.appendChild(head);
    this.forgetButton = el("button", { class: "icon-btn forget-btn", type: "button", "aria-label": t.forget, title: t.forget, hidden: true }, [icon("trash")]);
    this.forgetButton.addEventListener("click", function () {
      self.askForget();
    });
    head.appendChild(this.forgetButton);

    this.banner = el("div", { class: "error banner", role: "alert", hidden: true });
    this.panel.appendChild(this.banner);
    this.status = el("p", { class: "status", role: "status", hidden: true });
    this.panel.appendChild(this.status);
    var forgetYes = el("button", { class: "btn primary", type: "button" }, [t.forgetYes]);
    var forgetNo = el("button", { class: "btn ghost", type: "button" }, [t.cancel]);
    this.forgetBar = el("div", { class: "forget", role: "alertdialog", "aria-label": t.forget, hidden: true }, [el("span", {}, [t.forgetAsk]), forgetNo, forgetYes]);
    forgetYes.addEventListener("click", function () {
      self.forget();
    });
    forgetNo.addEventListener("click", function () {
      self.forgetBar.hidden = true;
      self.forgetButton.focus();
    });
    this.panel.appendChild(this.forgetBar);

    // The live region scrolls; the messages inside it are a list. (role="log" is not allowed on an <ol>, and
    // an <li> needs a list parent: axe-core's aria-allowed-role and listitem rules.)
    this.log = el("ol", { class: "thread" });
    this.scroller = el("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": t.messages }, [this.log]);
    this.panel.appendChild(this.scroller);
    this.addGreeting();

    this.input = el("textarea", { rows: 1, placeholder: t.placeholder, "aria-label": t.placeholder, maxlength: DEFAULT_CONFIG.max_message_chars });
    this.sendButton = el("button", { class: "send", type: "submit", "aria-label": t.send, title: t.send, disabled: true }, [icon("send")]);
    var composer = el("form", { class: "composer" }, [this.input, this.sendButton]);
    composer.addEventListener("submit", function (event) {
      event.preventDefault();
      self.submit();
    });
    this.input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault(); // Enter sends; Shift+Enter is a new line; Korean IME composition is left alone
        self.submit();
      }
    });
    this.input.addEventListener("input", function () {
      self.input.style.height = "auto";
      self.input.style.height = Math.min(self.input.scrollHeight + 2, 140) + "px";
      self.updateSend();
    });
    this.panel.appendChild(composer);
    this.panel.appendChild(el("div", { class: "foot" }, [t.poweredBy]));

    if (this.mode === "bubble") {
      this.closeButton = el("button", { class: "icon-btn", type: "button", "aria-label": t.close, title: t.close }, [icon("close")]);
      this.closeButton.addEventListener("click", function () {
        self.setOpen(false);
      });
      head.appendChild(this.closeButton);
      this.launcher = el("button", { class: "launcher", type: "button", "aria-label": t.open, title: t.open, "aria-expanded": "false", "aria-controls": panelId }, [icon("chat")]);
      this.launcher.addEventListener("click", function () {
        self.setOpen(self.panel.hidden);
      });
      this.panel.hidden = true;
      this.panel.addEventListener("keydown", function (event) {
        if (event.key === "Escape") self.setOpen(false);
      });
      wrap.appendChild(this.panel);
      wrap.appendChild(this.launcher);
    } else {
      wrap.appendChild(this.panel);
    }
    this.root.appendChild(style);
    this.root.appendChild(wrap);
  };

  Widget.prototype.setOpen = function (open) {
    if (this.mode !== "bubble") return;
    this.panel.hidden = !open;
    this.launcher.setAttribute("aria-expanded", String(open));
    this.launcher.setAttribute("aria-label", open ? this.t.close : this.t.open);
    this.launcher.setAttribute("title", open ? this.t.close : this.t.open);
    this.launcher.replaceChildren(icon(open ? "close" : "chat"));
    (open ? this.input : this.launcher).focus();
  };

  Widget.prototype.showBanner = function (text) {
    this.banner.textContent = text;
    this.banner.hidden = !text;
  };

  Widget.prototype.updateSend = function () {
    this.sendButton.disabled = this.busy || !this.input.value.trim();
  };

  Widget.prototype.addGreeting = function () {
    var item = el("li", { class: "msg assistant" }, [el("div", { class: "text" }, [this.t.greeting])]);
    this.log.appendChild(item);
  };

  Widget.prototype.addMessage = function (role, text) {
    var who = role === "user" ? this.t.you : this.t.assistant;
    var body = el("div", { class: role === "assistant" ? "text md" : "text" }, [text]);
    var item = el("li", { class: "msg " + role }, [el("span", { class: "sr" }, [who + ": "]), body]);
    this.log.appendChild(item);
    this.scroll();
    return { item: item, body: body, text: "" };
  };

  Widget.prototype.scroll = function () {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  };

  Widget.prototype.submit = function () {
    var text = this.input.value.trim();
    if (!text || this.busy) return;
    this.input.value = "";
    this.input.style.height = "auto";
    this.send(text);
  };

  /** Send one message and stream the answer into a new assistant bubble. */
  Widget.prototype.send = async function (text) {
    var self = this;
    this.busy = true;
    this.updateSend();
    this.addMessage("user", text);
    var answer = this.addMessage("assistant", "");
    answer.body.setAttribute("aria-label", this.t.typing);
    var finished = false;
    try {
      var body = { message: text, stream: true, user: this.voter };
      if (this.conversationId) body.conversation_id = this.conversationId;
      var response = await this.call("/api/chat", body);
      this.showBanner("");
      await readEvents(response, function (event, data) {
        if (event === "start") {
          self.conversationId = data.conversation_id;
          answer.messageId = data.message_id;
          answer.token = data.feedback_token;
          self.proof = { message_id: data.message_id, feedback_token: data.feedback_token };
          self.forgetButton.hidden = false;
          self.status.hidden = true;
        } else if (event === "delta") {
          answer.text += data.text;
          answer.body.replaceChildren(renderMarkdown(answer.text)); // elements made here, text as text
          self.scroll();
        } else if (event === "done") {
          finished = true;
          answer.sources = data.sources || [];
        } else if (event === "error") {
          throw new ApiError(data.error.code, data.error.message, 0);
        }
      });
      if (!finished) throw new ApiError("cut", this.t.cut, 0);
      this.addSources(answer);
      this.addRating(answer);
    } catch (error) {
      if (!answer.text) answer.item.remove();
      this.appendError(answer.text ? answer.item : this.addMessage("assistant", "").item, error);
    } finally {
      answer.body.removeAttribute("aria-label");
      this.busy = false;
      this.updateSend();
      this.scroll();
    }
  };

  Widget.prototype.askForget = function () {
    if (!this.conversationId || !this.proof) return;
    this.forgetBar.hidden = false;
    this.forgetBar.querySelector(".btn.primary").focus();
  };

  /** Delete this conversation everywhere (DELETE /api/conversations/<id>, proven with an answer's token), then
   *  start afresh. */
  Widget.prototype.forget = async function () {
    this.forgetBar.hidden = true;
    if (!this.conversationId || !this.proof || this.busy) return;
    this.busy = true;
    this.updateSend();
    try {
      await this.call("/api/conversations/" + encodeURIComponent(this.conversationId), this.proof, "DELETE");
      this.conversationId = null;
      this.proof = null;
      this.forgetButton.hidden = true;
      this.log.replaceChildren();
      this.addGreeting();
      this.showBanner("");
      this.status.textContent = this.t.forgotten;
      this.status.hidden = false;
      this.input.focus();
    } catch (error) {
      this.showBanner(this.t.forgetFailed + this.explain(error));
    } finally {
      this.busy = false;
      this.updateSend();
    }
  };

  Widget.prototype.appendError = function (item, error) {
    var body = item.querySelector(".text");
    if (body && !body.textContent) body.remove();
    var text = error && error.code === "cut" ? this.t.cut : this.explain(error);
    item.appendChild(el("div", { class: "error", role: "alert" }, [text]));
  };

  /** The knowledge-base entries the answer was built on, collapsed under it (a native <details>: keyboard and
   *  screen readers know it), each as its question, in text. */
  Widget.prototype.addSources = function (answer) {
    var sources = (answer.sources || []).filter(function (s) {
      return s && typeof s.question === "string";
    });
    if (!sources.length) return;
    var items = sources.map(function (s) {
      return el("li", { "data-entry": String(s.id || "") }, [s.question]);
    });
    var summary = el("summary", {}, [this.t.sources + " (" + sources.length + ")"]);
    answer.item.appendChild(el("details", { class: "sources" }, [summary, el("ol", {}, items)]));
  };

  Widget.prototype.addRating = function (answer) {
    var t = this.t;
    var self = this;
    var up = el("button", { class: "thumb up", type: "button", "aria-label": t.up, title: t.up, "aria-pressed": "false" }, [icon("up")]);
    var down = el("button", { class: "thumb down", type: "button", "aria-label": t.down, title: t.down, "aria-pressed": "false" }, [icon("down")]);
    var row = el("div", { class: "rate", role: "group", "aria-label": t.helpful }, [el("span", { class: "label" }, [t.helpful]), up, down]);
    var note = el("div", { class: "note", role: "status" });
    answer.item.appendChild(row);
    answer.item.appendChild(note);
    answer.up = up;
    answer.down = down;
    answer.note = note;
    up.addEventListener("click", function () {
      self.closeForm(answer);
      self.vote(answer, "up", {});
    });
    down.addEventListener("click", async function () {
      // The thumbs-down counts at once; the form only adds detail to it.
      if (answer.rating !== "down" && !(await self.vote(answer, "down", {}))) return;
      if (answer.form) self.closeForm(answer);
      else self.openForm(answer);
    });
  };

  /** Record a vote; a later vote by the same voter replaces it. Resolves true on success. */
  Widget.prototype.vote = async function (answer, rating, details) {
    answer.up.disabled = answer.down.disabled = true;
    var body = { message_id: answer.messageId, rating: rating, feedback_token: answer.token, user: this.voter };
    Object.keys(details).forEach(function (name) {
      if (details[name]) body[name] = details[name];
    });
    try {
      await this.call("/api/feedback", body);
      answer.rating = rating;
      answer.up.setAttribute("aria-pressed", String(rating === "up"));
      answer.down.setAttribute("aria-pressed", String(rating === "down"));
      var detailed = Object.keys(details).some(function (name) {
        return details[name];
      });
      answer.note.textContent = rating === "up" || detailed ? this.t.thanks : "";
      return true;
    } catch (error) {
      answer.note.textContent = this.t.voteFailed + this.explain(error);
      return false;
    } finally {
      answer.up.disabled = answer.down.disabled = false;
    }
  };

  Widget.prototype.openForm = function (answer) {
    var t = this.t;
    var self = this;
    var name = "reason-" + answer.messageId;
    var chips = this.config.reasons.map(function (reason) {
      var label = t.reasons[reason] || reason.replace(/_/g, " ");
      return el("label", { class: "chip" }, [el("input", { type: "radio", name: name, value: reason }), el("span", {}, [label])]);
    });
    var comment = el("textarea", { rows: 2, maxlength: this.config.max_comment_chars });
    var correction = el("textarea", { rows: 2, maxlength: this.config.max_correction_chars });
    var commentId = "c-" + answer.messageId;
    var correctionId = "k-" + answer.messageId;
    comment.id = commentId;
    correction.id = correctionId;
    var cancel = el("button", { class: "btn ghost", type: "button" }, [t.cancel]);
    var form = el("form", { class: "fb", "aria-label": t.reasonLegend }, [
      el("fieldset", {}, [el("legend", {}, [t.reasonLegend]), el("div", { class: "chips" }, chips)]),
      el("div", {}, [el("label", { class: "field", for: commentId }, [t.comment]), comment]),
      el("div", {}, [el("label", { class: "field", for: correctionId }, [t.correction]), correction]),
      el("div", { class: "actions" }, [cancel, el("button", { class: "btn primary", type: "submit" }, [t.submit])]),
    ]);
    cancel.addEventListener("click", function () {
      self.closeForm(answer);
      answer.down.focus();
    });
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      var picked = form.querySelector("input[type=radio]:checked");
      var ok = await self.vote(answer, "down", {
        reason: picked ? picked.value : null,
        comment: comment.value.trim(),
        correction: correction.value.trim(),
      });
      if (ok) {
        self.closeForm(answer);
        answer.down.focus();
      }
    });
    answer.form = form;
    answer.down.setAttribute("aria-expanded", "true");
    answer.item.appendChild(form);
    var first = form.querySelector("input");
    if (first) first.focus();
    this.scroll();
  };

  Widget.prototype.closeForm = function (answer) {
    if (!answer.form) return;
    answer.form.remove();
    answer.form = null;
    answer.down.setAttribute("aria-expanded", "false");
  };

  // --- mounting ----------------------------------------------------------------------------

  /** Mount a widget on ``host`` (an element); options as the data attributes, without "data-". */
  function mount(host, options) {
    if (!options || !options.gateway) throw new Error("tuneloop widget: a gateway URL is required");
    return new Widget(host, options);
  }

  function fromScript(script) {
    var data = script.dataset;
    var options = {
      gateway: data.gateway || new URL(script.src, document.baseURI).origin,
      key: data.key,
      lang: data.lang,
      title: data.title,
      mode: data.mode,
      accent: data.accent,
    };
    if (options.mode === "manual") return; // the page calls Tuneloop.mount itself
    var start = function () {
      var host;
      if (options.mode === "page") {
        host = data.target ? document.querySelector(data.target) : null;
        if (!host) {
          host = document.createElement("div");
          if (script.parentNode && script.parentNode !== document.head) script.parentNode.insertBefore(host, script);
          else document.body.appendChild(host);
        }
      } else {
        host = document.createElement("div");
        document.body.appendChild(host);
      }
      host.classList.add("tuneloop-widget");
      mount(host, options);
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  }

  window.Tuneloop = { mount: mount, version: "1" };
  if (document.currentScript && document.currentScript.src) fromScript(document.currentScript);
})();
