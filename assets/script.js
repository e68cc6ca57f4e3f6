// The gallery page: lists the images from the API, 50 at a time, and adds
// new ones. Text from the API is only ever set with textContent /
// setAttribute, never parsed as HTML.
//
// Which API origins the page may call is decided by its server's
// Content-Security-Policy (connect-src: this origin, plus each
// `static-server --api-origin`). A ?api= origin the policy does not allow
// is refused by the browser before any request leaves; the page hears of
// it through the `securitypolicyviolation` event and says so.
//
// No single front door: ?api=A,B names several APIs (front doors). Each
// request goes to them in turn, starting with the one that answered last,
// and moves on from one that cannot be reached, does not answer in time,
// or answers 502/503/504; a POST carries an Idempotency-Key, so the next
// one answers a POST the last one may have stored with the same image.
//
// Every other failure is named too, in words a visitor can act on: an API
// that cannot be reached, one that refuses this page's origin (CORS), one
// that answers with an error status, and this page opened on the static
// server itself, whose /api is nothing but 404s. An image that cannot be
// loaded is replaced by a placeholder from this page's own origin.
(function () {
  'use strict';

  // Rows per request: GET /images.json?limit=50[&after=<last id seen>].
  var PAGE_SIZE = 50;
  // A POST that failed in transit or got one of these answers is sent once
  // more with the same Idempotency-Key: the API answers a repeated key with
  // the image first stored, so a retry never stores the image twice.
  // The same statuses send any request on to the next API, when there is
  // one.
  var RETRY_STATUSES = [502, 503, 504];
  // Wait before that retry, unless a readable Retry-After (at most 5 s)
  // says otherwise.
  var RETRY_DELAY_MS = 500;
  // An API that has not answered a request within this long is given up
  // on, and the next one tried (a stopped front door never answers).
  var REQUEST_TIMEOUT_MS = 10000;
  // Shown instead of an image that cannot be loaded: a file of this page's
  // own origin, so the policy's img-src 'self' allows it and it loads
  // wherever the page does (no data: URL: the policy refuses those).
  var PLACEHOLDER = '/images/placeholder.svg';

  // Where the API lives: ?api=BASE[,BASE…], else <meta name="gallery-api">
  // (the same form), else this origin's /api (behind nginx). A base is an
  // origin (an api-server) or a URL with a path (a front door's
  // http://HOST:PORT/api).
  function apiBases() {
    var fromQuery = new URLSearchParams(window.location.search).get('api');
    var meta = document.querySelector('meta[name="gallery-api"]');
    var fromMeta = meta ? meta.getAttribute('content') : '';
    var bases = (fromQuery || fromMeta || '/api').split(',')
      .map(function (base) { return base.trim(); })
      .filter(function (base) { return base !== ''; })
      .map(function (base) { return base.replace(/\/+$/, ''); });
    return bases.length > 0 ? bases : ['/api'];
  }

  function originOf(url) {
    try {
      return new URL(url, window.location.href).origin;
    } catch (e) {
      return null;
    }
  }

  // Each API as {base, origin}, in the order given.
  var APIS = apiBases().map(function (base) {
    return { base: base, origin: originOf(base) };
  });
  // The distinct origins among them, for messages.
  var API_ORIGINS = APIS.map(function (api) { return api.origin; })
    .filter(function (origin, i, all) { return all.indexOf(origin) === i; });
  // The API that answered last: where the next request starts.
  var current = 0;
  // Origins the policy refused: not tried again while others remain.
  var refusedOrigins = {};
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

  // Names the API the pictures come from: the one that answered last.
  function showApi(api) {
    document.getElementById('api-base').textContent =
      api.origin === window.location.origin ? 'this site' : api.base;
  }
  showApi(APIS[0]);

  // Shows `text` in `element`, styled as `kind` ('error', 'success' or none).
  function show(element, text, kind) {
    element.textContent = text;
    element.classList.toggle('is-error', kind === 'error');
    element.classList.toggle('is-success', kind === 'success');
  }

  function setStatus(text, kind) {
    show(status, text, kind);
  }

  // A failure already put in words for the visitor.
  function Problem(message) {
    this.message = message;
  }

  // A request that no API answered: the last `error` (a TypeError from
  // fetch, or the AbortError of a timeout) and every API `tried`.
  function Unanswered(error, tried) {
    this.error = error;
    this.tried = tried;
  }

  // Sends `path` under the API to each API in turn, starting with the one
  // that answered last, until one answers with anything but 502/503/504
  // (the last API's 502/503/504 is its answer). One that cannot be
  // reached, or does not answer within REQUEST_TIMEOUT_MS, is passed over
  // too. Resolves with {response, api}; rejects with an Unanswered.
  function request(path, init) {
    var order = [];
    for (var i = 0; i < APIS.length; i++) order.push(APIS[(current + i) % APIS.length]);
    var allowed = order.filter(function (api) { return !refusedOrigins[api.origin]; });
    if (allowed.length > 0) order = allowed;
    var tried = [];
    function attempt(k) {
      var api = order[k];
      var last = k + 1 === order.length;
      var abort = new AbortController();
      var timer = setTimeout(function () { abort.abort(); }, REQUEST_TIMEOUT_MS);
      var options = Object.assign({ signal: abort.signal }, init);
      tried.push(api);
      return fetch(api.base + path, options).then(function (response) {
        clearTimeout(timer);
        if (!last && RETRY_STATUSES.indexOf(response.status) >= 0) return attempt(k + 1);
        if (RETRY_STATUSES.indexOf(response.status) < 0) {
          current = APIS.indexOf(api);
          showApi(api);
        }
        return { response: response, api: api };
      }, function (error) {
        clearTimeout(timer);
        if (!last) return attempt(k + 1);
        throw new Unanswered(error, tried);
      });
    }
    return attempt(0);
  }

  // What an error status from `api` means to the visitor.
  function statusProblem(response, api) {
    if (response.status === 404 && api.origin === window.location.origin) {
      return new Problem('There is no gallery API at this address: this page was opened on ' +
        'its file server directly. Open the gallery through its front door (the address ' +
        'gallery-supervisor prints, such as http://127.0.0.1:8080/), or add ' +
        '?api=http://HOST:PORT to this page’s address to name the API.');
    }
    if (response.status >= 500) {
      return new Problem('The server had a problem (' + response.status + ').');
    }
    return new Problem('The API at ' + api.origin + ' did not accept the request (' +
      response.status + ').');
  }

  function unreadable(api) {
    return new Problem('The API at ' + api.origin + ' sent an answer this page cannot read.');
  }

  // Puts a failed request into words. fetch rejects with a TypeError both
  // when nothing answers and when the answer does not allow this page's
  // origin (CORS), and says no more; a `no-cors` request for the same URL
  // tells the two apart, as it resolves (with an opaque response) whenever
  // a server answered at all. With several APIs, each one tried is asked
  // (an API that answers nothing in time counts as not reached).
  function diagnose(error) {
    if (error instanceof Problem) return Promise.resolve(error.message);
    if (!(error instanceof Unanswered)) return Promise.resolve(unreadable(APIS[0]).message);
    var tried = error.tried.filter(function (api, i, all) { return all.indexOf(api) === i; });
    if (tried.length === 1 && error.error && error.error.name === 'AbortError') {
      return Promise.resolve('The API at ' + tried[0].origin + ' did not answer in time.');
    }
    return Promise.all(tried.map(function (api) {
      var abort = new AbortController();
      var timer = setTimeout(function () { abort.abort(); }, REQUEST_TIMEOUT_MS);
      return fetch(api.base + '/images.json?limit=1',
        { mode: 'no-cors', cache: 'no-store', signal: abort.signal })
        .then(function () { return true; }, function () { return false; })
        .then(function (answered) { clearTimeout(timer); return answered; });
    })).then(function (answered) {
      var refusing = tried.filter(function (api, i) { return answered[i]; });
      if (refusing.length > 0) {
        return 'The API at ' + refusing[0].origin + ' refused this page’s origin (CORS).';
      }
      if (tried.length === 1) {
        return 'The API at ' + tried[0].origin + ' could not be reached.';
      }
      return 'None of the APIs at ' + tried.map(function (api) { return api.origin; })
        .join(', ') + ' could be reached.';
    });
  }

  document.addEventListener('securitypolicyviolation', function (event) {
    var origin = originOf(event.blockedURI);
    if (event.effectiveDirective !== 'connect-src' || API_ORIGINS.indexOf(origin) < 0) {
      return;
    }
    refusedOrigins[origin] = true;
    // While another API remains, the page carries on with it.
    if (API_ORIGINS.some(function (o) { return !refusedOrigins[o]; })) return;
    refusal = API_ORIGINS.length === 1
      ? 'This page may not call the API at ' + origin +
        ': its server’s Content-Security-Policy does not allow that origin' +
        ' (start static-server with --api-origin ' + origin + ').'
      : 'This page may not call the APIs at ' + API_ORIGINS.join(', ') +
        ': its server’s Content-Security-Policy does not allow those origins' +
        ' (start static-server with --api-origin ' + API_ORIGINS.join(' --api-origin ') + ').';
    // The event may come before or after the refused fetch settles; either
    // way this message is the one left standing.
    setStatus(refusal, 'error');
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
    img.addEventListener('error', function broken() {
      img.removeEventListener('error', broken);
      figure.classList.add('is-broken');
      img.setAttribute('data-failed-src', String(image.url));
      img.setAttribute('src', PLACEHOLDER);
    });

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
    return request('/images.json' + query, { headers: { Accept: 'application/json' } })
      .then(function (answer) {
        if (!answer.response.ok) throw statusProblem(answer.response, answer.api);
        return answer.response.json().then(function (images) {
          if (!Array.isArray(images)) throw unreadable(answer.api);
          return images;
        }, function () {
          throw unreadable(answer.api);
        });
      })
      .then(function (images) {
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

  function failed(error) {
    return diagnose(error).then(function (message) {
      // A refusal by the policy, whenever its event came, has the last word.
      setStatus(refusal || message, 'error');
    });
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

  // The form's field called `name` in the API's messages, by its label.
  function fieldLabel(name) {
    var label = form.querySelector('label[for="' + name + '"]');
    return label && label.firstChild ? label.firstChild.textContent.trim() : name;
  }

  function capitalized(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // The API's error answer as {message, field}: the field its message names
  // (`url` must be…) marked, and called by its label rather than its JSON
  // name; no developer quoting left in the text.
  function errorText(response, api) {
    return response.json()
      .then(function (body) { return body && typeof body.error === 'string' ? body : null; })
      .catch(function () { return null; })
      .then(function (body) {
        if (!body) return { message: statusProblem(response, api).message, field: null };
        var message = body.error;
        var named = /`([a-z_]+)`/.exec(message) || /^([a-z_]+) /.exec(message);
        var field = typeof body.field === 'string' ? body.field : named && named[1];
        if (!field || !form.elements.namedItem(field)) field = null;
        if (field) {
          message = message.split('`' + field + '`').join(fieldLabel(field));
          if (message.indexOf(field + ' ') === 0) {
            message = fieldLabel(field) + message.slice(field.length);
          }
        }
        message = message.replace(/`/g, '');
        if (response.status >= 500) {
          message = statusProblem(response, api).message.replace(/\.$/, ': ') + message;
        }
        return { message: capitalized(message), field: field };
      });
  }

  // Marks the form field called `name` as the one to fix (or none).
  function markField(name) {
    Array.prototype.forEach.call(form.querySelectorAll('input'), function (input) {
      if (input.name === name) {
        input.setAttribute('aria-invalid', 'true');
        input.setAttribute('aria-describedby', 'form-message');
      } else {
        input.removeAttribute('aria-invalid');
        input.removeAttribute('aria-describedby');
      }
    });
  }

  form.addEventListener('input', function (event) {
    if (event.target.getAttribute('aria-invalid') === 'true') {
      event.target.removeAttribute('aria-invalid');
    }
  });

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

  // POSTs `body` under `key` to each API in turn; then, when none took
  // it, to them all once more after a pause (`retries` rounds), the same
  // bytes under the same key each time. Resolves with {response, api}.
  function post(body, key, retries) {
    var sent = request('/images.json', {
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
      show(formMessage, 'Adding… (trying again)');
      return later(delay).then(function () { return post(body, key, retries - 1); });
    };
    return sent.then(function (answer) {
      var status = answer.response.status;
      return RETRY_STATUSES.indexOf(status) < 0 ? answer : again(retryDelay(answer.response));
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
    markField(null);
    show(formMessage, 'Adding…');
    post(JSON.stringify(image), idempotencyKey(), 1)
      .then(function (answer) {
        var response = answer.response;
        if (!response.ok) {
          return errorText(response, answer.api).then(function (error) {
            show(formMessage, error.message, 'error');
            markField(error.field);
            if (error.field) form.elements.namedItem(error.field).focus();
          });
        }
        return response.json().then(function (stored) {
          place(stored);
          if (status.textContent === 'No images available.') setStatus('');
          form.reset();
          show(formMessage, 'Added “' + stored.title + '”.', 'success');
        }, function () {
          throw unreadable(answer.api);
        });
      })
      .catch(function (error) {
        return diagnose(error).then(function (message) {
          show(formMessage, refusal || message, 'error');
        });
      })
      .then(function () {
        submit.disabled = false;
      });
  });

  load();
})();
