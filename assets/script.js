// The gallery page: lists the images from the API and adds new ones.
// Text from the API is only ever set with textContent / setAttribute,
// never parsed as HTML.
(function () {
  'use strict';

  // Where the API lives: ?api=ORIGIN, else <meta name="gallery-api">, else
  // this origin's /api (behind nginx).
  function apiBase() {
    var fromQuery = new URLSearchParams(window.location.search).get('api');
    var meta = document.querySelector('meta[name="gallery-api"]');
    var fromMeta = meta ? meta.getAttribute('content') : '';
    var base = fromQuery || fromMeta || '/api';
    return base.replace(/\/+$/, '');
  }

  var API = apiBase();
  var gallery = document.getElementById('gallery');
  var status = document.getElementById('status');
  var form = document.getElementById('add-form');
  var submit = document.getElementById('add-submit');
  var formMessage = document.getElementById('form-message');

  document.getElementById('api-base').textContent = API;

  function setStatus(text) {
    status.textContent = text;
  }

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

  function load() {
    setStatus('Loading images…');
    fetch(API + '/images.json', { headers: { Accept: 'application/json' } })
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json();
      })
      .then(function (images) {
        if (!Array.isArray(images)) throw new Error('not a list');
        gallery.replaceChildren();
        if (images.length === 0) {
          setStatus('No images available.');
          return;
        }
        images.forEach(function (image) { gallery.appendChild(card(image)); });
        setStatus('');
      })
      .catch(function () {
        setStatus('Something went wrong.');
      });
  }

  function errorText(response) {
    return response.json()
      .then(function (body) { return body && typeof body.error === 'string' ? body.error : null; })
      .catch(function () { return null; })
      .then(function (message) { return message || 'Something went wrong.'; });
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
    fetch(API + '/images.json', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(image)
    })
      .then(function (response) {
        if (!response.ok) {
          return errorText(response).then(function (message) { formMessage.textContent = message; });
        }
        return response.json().then(function (stored) {
          gallery.appendChild(card(stored));
          if (status.textContent === 'No images available.') setStatus('');
          form.reset();
          formMessage.textContent = 'Added “' + stored.title + '”.';
        });
      })
      .catch(function () {
        formMessage.textContent = 'Something went wrong.';
      })
      .then(function () {
        submit.disabled = false;
      });
  });

  load();
})();
