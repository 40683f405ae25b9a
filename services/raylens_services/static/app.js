// The raylens search page: POST search (JSON), then a grid of result images with their scores.
// Relative URLs, so the page works under any Serve route prefix. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const objectUrls = [];

function headers(json) {
  const h = json ? { "content-type": "application/json" } : {};
  const key = $("apikey").value.trim();
  if (key) h["x-api-key"] = key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// "shape=circle, colour=red" -> {"shape": "circle", "colour": "red"}; numbers stay numbers.
function parseFilter(text) {
  const out = {};
  for (const part of text.split(",")) {
    if (!part.trim()) continue;
    const eq = part.indexOf("=");
    if (eq < 1) throw new Error(`filter "${part.trim()}" must look like column=value`);
    const value = part.slice(eq + 1).trim();
    out[part.slice(0, eq).trim()] = value !== "" && !isNaN(Number(value)) ? Number(value) : value;
  }
  return Object.keys(out).length ? out : null;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error ? `${body.error.status} ${body.error.code}: ${body.error.message}` : resp.statusText;
  } catch (e) {
    return `${resp.status} ${resp.statusText}`;
  }
}

async function loadIndices() {
  const resp = await fetch("indices", { headers: headers(false) });
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  const body = await resp.json();
  const select = $("index");
  select.innerHTML = "";
  for (const [name, info] of Object.entries(body.indices)) {
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = `${name} (${info.count})`;
    select.appendChild(opt);
  }
}

async function showImage(img, index, id) {
  const resp = await fetch(`images/${encodeURIComponent(index)}/${id}`, { headers: headers(false) });
  if (!resp.ok) { img.alt = "no image"; return; }
  const url = URL.createObjectURL(await resp.blob());
  objectUrls.push(url);
  img.src = url;
}

function render(body) {
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
  const grid = $("results");
  grid.innerHTML = "";
  for (const hit of body.hits) {
    const fig = document.createElement("figure");
    fig.className = "hit";
    const img = document.createElement("img");
    img.alt = hit.caption || `item ${hit.id}`;
    img.className = "hit-image";
    const cap = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    cap.appendChild(score);
    cap.appendChild(document.createTextNode(" " + (hit.caption || hit.path || `#${hit.id}`)));
    fig.appendChild(img);
    fig.appendChild(cap);
    grid.appendChild(fig);
    showImage(img, body.index, hit.id);
  }
  setStatus(`${body.hits.length} results from "${body.index}" in ${body.took_ms} ms`, false);
}

async function search(event) {
  event.preventDefault();
  let filters;
  try { filters = parseFilter($("filter").value); } catch (e) { setStatus(e.message, true); return; }
  const payload = { text: $("query").value, k: Number($("k").value) || 12 };
  if (filters) payload.filters = filters;
  if ($("index").value) payload.index = $("index").value;
  setStatus("searching…", false);
  const resp = await fetch("search", { method: "POST", headers: headers(true), body: JSON.stringify(payload) });
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  render(await resp.json());
}

$("search-form").addEventListener("submit", search);
$("apikey").addEventListener("change", loadIndices);
loadIndices();
