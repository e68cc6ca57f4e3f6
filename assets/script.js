// The gallery page: lists the images from the API, 50 at a time, and adds
// new ones. Text from the API is only ever set with textContent /
// setAttribute, never parsed as HTML.
//
// Which API origins the page may call is decided by its server's
// Content-Security-Policy (connect-src: this origin, plus each
// `static-server --api-origin`). A ?api= origin the policy does not allow
// is refused by the browser before any request leaves; the page hears of
// it through the `securitypolicyviolation` event and says so, rather than
// the generic "Something went wrong.".
(function () {
  'use strict';

  // Rows per request: GET /images.json?limit=50[&after=<last id seen>].
  var PAGE_SIZE = 50;
  // A POST that failed in transit or got one of these answers is sent once
  // more with the same Idempotency-Key: the API answers a repeated key with
  // the image first stored, so a retry never stores the image twice.
  var RETRY_STATUSES = [502, 503, 504];
  // Wait before that retry, unless a readable Retry-After (at most 5 s)
  // says otherwise.
  var RETRY_DELAY_MS = 500;

  // Where the API lives: ?api=ORIGIN, else <meta name="gallery-api">, else
  // this origin's /api (behind nginx).
  function apiBase() {
    var fromQuery = new URLSearchParams(window.location.search).get('api');
    var meta = document.querySelector('meta[name="gallery-api"]');
    var fromMeta = meta ? meta.getAttribute('content') : '';
    var base = fromQuery || fromMeta || '/api';
    return base.replace(/\/+$/, '');
  }

  function originOf(url) {
    try {
      return new URL(url, window.location.href).origin;
    } catch (e) {
      return null;
    }
  }

  var API = apiBase();
  var API_ORIGIN = originOf(API);
  var gallery = document.getElementById('gallery');
  var status = document.getElementById('status');
  var loadMore = document.getElementById('load-more');
  var form = document.getElementById('add-form');
  var submit = document.getElementById('add-submit');
  var formMessage = document.getElementById('form-message');

  // The highest id loaded page by page: the `after` of the next page.
  var after = 0;
  // The message to show once the browser has refused to connect to the API.
  var refusal = null;

  document.getElementById('api-base').textContent = API;

  function setStatus(text) {
    status.textContent = text;
  }

  document.addEventListener('securitypolicyviolation', function (event) {
    if (event.effectiveDirective !== 'connect-src' || originOf(event.blockedURI) !== API_ORIGIN) {
      return;
    }
    refusal = 'This page may not call the API at ' + API_ORIGIN +
      ': its server’s Content-Security-Policy does not allow that origin' +
      ' (start static-server with --api-origin ' + API_ORIGIN + ').';
    // The event may come before or after the refused fetch settles; either
    // way this message is the one left standing.
    setStatus(refusal);
    loadMore.hidden = true;
  });

  function card(image) {
    var figure = document.createElement('figure');
    figure.className = 'card';
    figure.setAttribute('data-id', String(image.id));

    var img = document.createElement('img');
    img.setAttribute('src', String(image.url));
    img.setAttribute('alt', String(image.alt_text));
    img.setAttribute('loading', 'lazy');

    var caption = document.createElement('figcaption');
    var title = document.createElement('h2');
    title.className = 'title';
    title.textContent = String(image.title);
    var alt = document.createElement('p');
    alt.className = 'alt';
    alt.textContent = String(image.alt_text);
    caption.appendChild(title);
    caption.appendChild(alt);

    figure.appendChild(img);
    figure.appendChild(caption);
    return figure;
  }

  // Shows an image's card in id order, once: an image added through the
  // form while pages remain comes again with a later page.
  function place(image) {
    var id = Number(image.id);
    var next = null;
    if (isFinite(id)) {
      if (gallery.querySelector('[data-id="' + String(image.id) + '"]')) return;
      for (var node = gallery.lastElementChild;
        node && Number(node.getAttribute('data-id')) > id;
        node = node.previousElementSibling) {
        next = node;
      }
    }
    gallery.insertBefore(card(image), next);
  }

  // Loads the next page and shows "Load more" while a full page came back.
  function loadPage() {
    var query = '?limit=' + PAGE_SIZE + (after > 0 ? '&after=' + after : '');
    return fetch(API + '/images.json' + query, { headers: { Accept: 'application/json' } })
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json();
      })
      .then(function (images) {
        if (!Array.isArray(images)) throw new Error('not a list');
        var cursor = after;
        // An API without pagination ignores `limit` and `after` and
        // answers every row: then this was the last page.
        var paged = images.length <= PAGE_SIZE && images.every(function (image) {
          return Number(image.id) > cursor;
        });
        images.forEach(function (image) {
          place(image);
          after = Math.max(after, Number(image.id) || 0);
        });
        loadMore.hidden = !(paged && images.length === PAGE_SIZE);
      });
  }

  function failed() {
    setStatus(refusal || 'Something went wrong.');
  }

  function load() {
    setStatus('Loading images…');
    loadPage()
      .then(function () {
        setStatus(gallery.children.length === 0 ? 'No images available.' : '');
      })
      .catch(failed);
  }

  loadMore.addEventListener('click', function () {
    loadMore.disabled = true;
    loadPage()
      .then(function () { setStatus(''); })
      .catch(failed)
      .then(function () { loadMore.disabled = false; });
  });

  function errorText(response) {
    return response.json()
      .then(function (body) { return body && typeof body.error === 'string' ? body.error : null; })
      .catch(function () { return null; })
      .then(function (message) { return message || 'Something went wrong.'; });
  }

  // A fresh random key per submission (crypto.randomUUID needs a secure
  // context; getRandomValues works on plain http too).
  function idempotencyKey() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (byte) {
      return (byte + 0x100).toString(16).slice(1);
    }).join('');
  }

  function later(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function retryDelay(response) {
    // Retry-After is readable on the page's own origin; CORS hides it.
    var seconds = Number(response.headers.get('Retry-After'));
    return seconds > 0 && seconds <= 5 ? seconds * 1000 : RETRY_DELAY_MS;
  }

  // POSTs `body` under `key`, retrying as RETRY_STATUSES says.
  function post(body, key, retries) {
    var sent = fetch(API + '/images.json', {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        Accept: 'application/json',
        'Idempotency-Key': key
      },
      body: body
    });
    if (retries === 0) return sent;
    var again = function (delay) {
      formMessage.textContent = 'Adding… (trying again)';
      return later(delay).then(function () { return post(body, key, retries - 1); });
    };
    return sent.then(function (response) {
      return RETRY_STATUSES.indexOf(response.status) < 0 ? response : again(retryDelay(response));
    }, function (error) {
      if (refusal) throw error;
      return again(RETRY_DELAY_MS);
    });
  }

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var data = new FormData(form);
    var image = {
      title: String(data.get('title') || ''),
      alt_text: String(data.get('alt_text') || ''),
      url: String(data.get('url') || '')
    };
    submit.disabled = true;
    formMessage.textContent = 'Adding…';
    post(JSON.stringify(image), idempotencyKey(), 1)
      .then(function (response) {
        if (!response.ok) {
          return errorText(response).then(function (message) { formMessage.textContent = message; });
        }
        return response.json().then(function (stored) {
          place(stored);
          if (status.textContent === 'No images available.') setStatus('');
          form.reset();
          formMessage.textContent = 'Added “' + stored.title + '”.';
        });
      })
      .catch(function () {
        formMessage.textContent = refusal || 'Something went wrong.';
      })
      .then(function () {
        submit.disabled = false;
      });
  });

  load();
})();
