// The lab's API page: renders /openapi.json without any outside asset (works offline).
(function () {
  "use strict";
  const el = (tag, attrs, ...kids) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const kid of kids) node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return node;
  };
  const refName = (schema) => (schema && schema.$ref ? schema.$ref.split("/").pop() : null);
  function typeOf(schema) {
    if (!schema) return "";
    const ref = refName(schema);
    if (ref) return ref;
    if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
    if (schema.type === "array") return `${typeOf(schema.items)}[]`;
    return schema.type || "object";
  }
  function render(spec) {
    document.title = `${spec.info.title} · API`;
    document.getElementById("api-title").textContent = `${spec.info.title} ${spec.info.version} · API`;
    const ops = document.getElementById("api-ops");
    ops.textContent = "";
    for (const [path, methods] of Object.entries(spec.paths || {})) {
      for (const [method, op] of Object.entries(methods)) {
        const summary = el("summary", {}, el("span", { class: `method ${method}` }, method),
          el("span", { class: "path" }, path), el("span", {}, op.summary || ""));
        const body = el("div", { class: "body" });
        if (op.description) body.append(el("p", {}, op.description));
        const params = op.parameters || [];
        if (params.length) {
          const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "")));
          for (const p of params) {
            table.append(el("tr", {}, el("td", {}, p.name + (p.required ? " *" : "")), el("td", {}, p.in),
              el("td", {}, typeOf(p.schema)), el("td", {}, p.description || (p.schema && p.schema.description) || "")));
          }
          body.append(table);
        }
        const rb = op.requestBody && op.requestBody.content;
        if (rb) for (const [type, c] of Object.entries(rb)) body.append(el("p", {}, `body (${type}): ${typeOf(c.schema)}`));
        const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`);
        if (codes.length) body.append(el("p", {}, `responses: ${codes.join(" · ")}`));
        ops.append(el("details", { class: "op" }, summary, body));
      }
    }
    const schemas = document.getElementById("api-schemas");
    for (const [name, schema] of Object.entries((spec.components || {}).schemas || {})) {
      schemas.append(el("details", { class: "op", id: `schema-${name}` }, el("summary", {}, el("span", { class: "path" }, name),
        el("span", {}, schema.description ? schema.description.split("\n")[0] : "")),
      el("div", { class: "body" }, el("pre", {}, JSON.stringify(schema, null, 2)))));
    }
  }
  fetch("/openapi.json").then((r) => r.json()).then(render).catch((err) => {
    document.getElementById("api-ops").textContent = `cannot load /openapi.json: ${err}`;
  });
})();
