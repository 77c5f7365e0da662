// The course's small fixes to the book theme, run on every page of the site.
document.addEventListener("DOMContentLoaded", () => {
  // The sidebar buttons. The PyData theme wires only the first `.primary-toggle` (and
  // `.secondary-toggle`) on the page: a copy in its top bar, which has no height on a phone.
  // The buttons a reader sees sit in the article header; a click on them clicks the wired copy.
  for (const name of ["primary-toggle", "secondary-toggle"]) {
    const [wired, ...copies] = document.querySelectorAll("." + name);
    copies.forEach((button) => button.addEventListener("click", (event) => {
      event.preventDefault();
      event.stopPropagation();
      wired.click();
    }));
  }
  // A plot or diagram opens at full size in a new tab when clicked.
  document.querySelectorAll("article img").forEach((img) => {
    if (img.closest("a")) return;
    const link = document.createElement("a");
    link.href = img.src;
    link.target = "_blank";
    link.rel = "noopener";
    link.title = "Open the full-size image";
    link.className = "lmcourse-image-link";
    img.replaceWith(link);
    link.appendChild(img);
  });
  // Search: the page that teaches a term ranks above its glossary entry and the bibliography
  // (their index entries score up to 100, a page's text 5 per word), and result snippets show the
  // page's prose: no raw TeX (math is typeset only on the page), no sidebar or cost box.
  if (typeof Scorer !== "undefined" && typeof Search !== "undefined") {
    Scorer.score = ([docname, , , , score]) =>
      /appendix\/(glossary|bibliography)$/.test(docname) ? Math.min(score, 1) : score;
    const toText = Search.htmlToText;
    Search.htmlToText = (html, anchor) => {
      const doc = new DOMParser().parseFromString(html, "text/html");
      doc.querySelectorAll(".math, .bd-sidebar-secondary, .bd-header-article, .onlyprint, .prev-next-footer, " +
                           ".notebook-cost, .cell_input, .cell_output, script, style")
        .forEach((element) => element.remove());
      return toText(doc.documentElement.outerHTML, anchor);
    };
  }
});
