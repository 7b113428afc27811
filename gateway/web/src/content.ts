// A lot's content on its page: the gallery, the attributes and the comments, kept live by the
// lot's WebSocket events. The seller, curators and admins manage the gallery and attributes;
// anyone signed in comments; authors, curators and admins delete comments.

import { ApiError, call, loadSession, upload } from "./api";
import type { Attribute, Comment, Image, Lot } from "./api";
import { el } from "./dom";
import type { LiveEvent } from "./live";

/** The lot-topic event types this section handles (they carry no lot state). */
export const CONTENT_EVENTS = new Set([
  "categories",
  "attributes_added",
  "attribute_deleted",
  "comment",
  "comment_deleted",
  "image_added",
  "image_deleted",
  "images_reordered",
]);

export interface ContentSection {
  element: HTMLElement;
  /** A `lot:<id>` event; content types are handled, others ignored. */
  event(e: LiveEvent): void;
}

function errorText(e: unknown): string {
  return e instanceof ApiError ? e.message : String(e);
}

export async function contentSection(lot: Lot): Promise<ContentSection> {
  const path = `/v1/lots/${encodeURIComponent(lot.lot_id)}`;
  const [imagesAnswer, attributesAnswer, commentsAnswer] = await Promise.all([
    call<{ images: Image[] }>("GET", `${path}/images`),
    call<{ attributes: Attribute[] }>("GET", `${path}/attributes`),
    call<{ comments: Comment[] }>("GET", `${path}/comments?limit=200`),
  ]);
  let images = imagesAnswer.data.images;
  let attributes = attributesAnswer.data.attributes;
  let comments = commentsAnswer.data.comments;
  const me = loadSession();
  const manager = !!me && (me.role === "curator" || me.role === "admin" || me.user_id === lot.seller_id);
  const moderator = !!me && (me.role === "curator" || me.role === "admin");

  const gallery = el("ul", { id: "gallery", class: "gallery" });
  const attributeList = el("dl", { id: "attributes" });
  const commentList = el("ol", { id: "comments" });
  const message = el("p", { id: "content-message", role: "alert" });

  const say = (text: string, ok = false) => {
    message.textContent = text;
    message.className = ok ? "ok" : "error";
  };
  const act = async (what: () => Promise<unknown>) => {
    message.textContent = "";
    try {
      await what();
    } catch (e) {
      say(errorText(e));
    }
  };

  /** A button that deletes what `target` names; the live event then updates the list. */
  const removeButton = (label: string, target: string) => {
    const remove = el("button", { type: "button", class: "secondary small" }, label);
    remove.onclick = () => act(() => call("DELETE", target));
    return remove;
  };

  const renderGallery = () => {
    gallery.replaceChildren(
      ...images.map((image) =>
        el(
          "li",
          {},
          el(
            "a",
            { href: image.url, target: "_blank", rel: "noopener" },
            el("img", {
              src: `${image.url}?size=thumb`,
              alt: `${lot.title}, image ${image.position + 1}`,
              "data-image-id": image.image_id,
              loading: "lazy",
            }),
          ),
          manager ? removeButton("Remove", `${path}/images/${encodeURIComponent(image.image_id)}`) : null,
        ),
      ),
    );
    if (images.length === 0) gallery.append(el("li", { class: "help" }, "No images yet."));
  };
  const renderAttributes = () => {
    attributeList.replaceChildren(
      ...attributes.flatMap((a) => [
        el("dt", {}, a.key),
        el(
          "dd",
          {},
          a.value,
          manager ? removeButton("Remove", `${path}/attributes/${encodeURIComponent(a.attribute_id)}`) : null,
        ),
      ]),
    );
    if (attributes.length === 0) attributeList.append(el("dd", { class: "help" }, "No details yet."));
  };
  const renderComments = () => {
    commentList.replaceChildren(
      ...comments.map((c) =>
        el(
          "li",
          { "data-comment-id": c.comment_id },
          el("span", { class: "author" }, me && c.author === me.user_id ? "you" : c.author),
          " ",
          el("time", { datetime: c.created_at }, new Date(c.created_at).toLocaleString()),
          el("p", {}, c.content),
          me && (moderator || c.author === me.user_id)
            ? removeButton("Delete", `${path}/comments/${encodeURIComponent(c.comment_id)}`)
            : null,
        ),
      ),
    );
  };

  // Forms: an image upload and an attribute for managers, a comment for anyone signed in.
  let uploadForm: HTMLElement | null = null;
  if (manager) {
    const file = el("input", { id: "image-file", type: "file", accept: "image/png,image/jpeg" });
    const send = el("button", { type: "submit", id: "upload-image" }, "Add image");
    const form = el("form", { id: "image-form" }, el("label", { for: "image-file" }, "Add an image (PNG or JPEG, at most 5 MiB)"), el("div", { class: "row" }, file, send));
    form.onsubmit = (ev) => {
      ev.preventDefault();
      const chosen = file.files?.[0];
      if (!chosen) return say("Choose a file first.");
      send.disabled = true;
      void act(async () => {
        await upload(`${path}/images`, chosen);
        file.value = "";
        say("Image added.", true);
      }).finally(() => (send.disabled = false));
    };
    uploadForm = form;
  }
  let attributeForm: HTMLElement | null = null;
  if (manager) {
    const key = el("input", { id: "attribute-key", placeholder: "key, e.g. medium" });
    const value = el("input", { id: "attribute-value", placeholder: "value" });
    const add = el("button", { type: "submit", id: "add-attribute" }, "Add");
    const form = el("form", { id: "attribute-form", class: "row" }, key, value, add);
    form.onsubmit = (ev) => {
      ev.preventDefault();
      void act(async () => {
        await call("POST", `${path}/attributes`, { attributes: [{ key: key.value.trim(), value: value.value.trim() }] });
        key.value = "";
        value.value = "";
      });
    };
    attributeForm = form;
  }
  let commentForm: HTMLElement | null = null;
  if (me) {
    const text = el("textarea", { id: "comment-text", maxlength: "2000", rows: "3" });
    const post = el("button", { type: "submit", id: "post-comment" }, "Comment");
    const form = el("form", { id: "comment-form" }, el("label", { for: "comment-text" }, "Your comment"), text, post);
    form.onsubmit = (ev) => {
      ev.preventDefault();
      void act(async () => {
        await call("POST", `${path}/comments`, { content: text.value });
        text.value = "";
      });
    };
    commentForm = form;
  }

  renderGallery();
  renderAttributes();
  renderComments();

  const element = el(
    "section",
    { class: "content" },
    el("h2", {}, "Images"),
    gallery,
    uploadForm,
    el("h2", {}, "Details"),
    attributeList,
    attributeForm,
    el("h2", {}, "Comments"),
    commentList,
    commentForm,
    message,
  );

  return {
    element,
    event(e: LiveEvent) {
      switch (e.type) {
        case "image_added":
          if (!images.some((i) => i.image_id === e.image_id)) images = [...images, e as unknown as Image];
          renderGallery();
          break;
        case "image_deleted":
          images = images.filter((i) => i.image_id !== e.image_id);
          renderGallery();
          break;
        case "images_reordered":
          images = (e.images as Image[]) ?? images;
          renderGallery();
          break;
        case "attributes_added":
          for (const a of (e.attributes as Attribute[]) ?? []) {
            if (!attributes.some((x) => x.attribute_id === a.attribute_id)) attributes = [...attributes, a];
          }
          renderAttributes();
          break;
        case "attribute_deleted":
          attributes = attributes.filter((a) => a.attribute_id !== e.attribute_id);
          renderAttributes();
          break;
        case "comment":
          if (!comments.some((c) => c.comment_id === e.comment_id)) comments = [...comments, e as unknown as Comment];
          renderComments();
          break;
        case "comment_deleted":
          comments = comments.filter((c) => c.comment_id !== e.comment_id);
          renderComments();
          break;
      }
    },
  };
}
