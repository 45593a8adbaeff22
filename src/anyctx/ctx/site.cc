#include "anyctx/ctx/site.h"

namespace anyctx {

namespace detail {
std::atomic<SiteHook> g_site_hook{nullptr};
}  // namespace detail

namespace {
#define ANYCTX_SITE_NAME(name, text) (#name) + 1,
constexpr const char* kSiteNames[] = {ANYCTX_SITE_LIST(ANYCTX_SITE_NAME)};
#undef ANYCTX_SITE_NAME
#define ANYCTX_SITE_TEXT(name, text) text,
constexpr const char* kSiteDescriptions[] = {ANYCTX_SITE_LIST(ANYCTX_SITE_TEXT)};
#undef ANYCTX_SITE_TEXT
}  // namespace

const char* site_name(Site site) {
  int i = static_cast<int>(site);
  return i >= 0 && i < kSiteCount ? kSiteNames[i] : nullptr;
}

const char* site_description(Site site) {
  int i = static_cast<int>(site);
  return i >= 0 && i < kSiteCount ? kSiteDescriptions[i] : nullptr;
}

SiteHook set_site_hook(SiteHook hook) {
  return detail::g_site_hook.exchange(hook, std::memory_order_acq_rel);
}

}  // namespace anyctx
